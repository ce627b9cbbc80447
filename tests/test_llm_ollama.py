"""The context Ollama runs a model with, read from its own API (its OpenAI API reports none): the
loaded model's ``context_length`` (/api/ps), else ``num_ctx`` in the Modelfile (/api/show), else
the smallest default any Ollama version used, never the trained length. No real Ollama can be
installed here: a small server answers its routes as Ollama 0.12 does (shapes from its source)."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alllabel.llm.client import LLMClient, LLMConfig
from alllabel.llm.endpoint import OLLAMA_FLOOR

MODEL = "llama3.2"


class FakeOllama:
    """/v1/models without a context, /api/show with ``parameters`` and ``model_info``, /api/ps
    with the loaded models; /props is not found (Ollama has none)."""

    def __init__(self, *, trained=131072, parameters="", loaded_context=None):
        show = {
            "parameters": parameters,
            "model_info": {"general.architecture": "llama", "llama.context_length": trained},
        }
        ps = {"models": []}
        if loaded_context:
            ps["models"].append(
                {
                    "name": MODEL + ":latest",
                    "model": MODEL + ":latest",
                    "size_vram": 1,
                    "context_length": loaded_context,
                }  # fmt: skip
            )
        models = {"object": "list", "data": [{"id": MODEL + ":latest", "object": "model"}]}
        self.asked: list[str] = []
        routes = {"/v1/models": models, "/api/ps": ps, "/api/show": show}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.asked.append(self.path)
                body = routes.get(self.path)
                data = json.dumps(body if body is not None else {"error": "not found"}).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def context_of(ollama: FakeOllama, **kw) -> int:
    c = LLMClient(LLMConfig(base_url=ollama.base_url, model=MODEL, **kw))
    return c.report()["context_tokens"]


@pytest.mark.parametrize(
    "server, context",
    [
        (dict(loaded_context=8192, parameters="num_ctx 4096"), 8192),  # as loaded wins
        (dict(parameters='num_ctx 4096\nstop "<|eot_id|>"'), 4096),  # the Modelfile's
        (dict(trained=1024, parameters="num_ctx 4096"), 1024),  # never past the trained length
    ],
)
def test_ollama_context_from_its_own_api(server, context):
    with FakeOllama(**server) as ollama:
        assert context_of(ollama) == context
    assert "/api/show" in ollama.asked


def test_ollama_without_a_known_context_is_not_overstated(caplog):
    caplog.set_level(logging.WARNING)
    with FakeOllama() as ollama:  # 131072 trained, nothing loaded, no num_ctx
        assert context_of(ollama) == OLLAMA_FLOOR
    assert "set ALLABEL_LLM_CONTEXT" in caplog.text


def test_ollama_context_set_by_the_user_is_not_asked(caplog):
    with FakeOllama() as ollama:
        assert context_of(ollama, context=16384) == 8000 + 2048  # the defaults fit
    assert "/api/show" not in ollama.asked and "ALLABEL_LLM_CONTEXT" not in caplog.text
