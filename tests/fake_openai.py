"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for driving the real client.

``script`` holds one-off behaviours consumed in order (an HTTP error with headers, a delay, a
raw reply); when it is empty, ``responder(request_json)`` writes the assistant's content.
Every request body is recorded in ``requests``.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def gold_responder(gold_by_text):
    """Answer with the gold entities of the input text (an oracle LLM)."""

    def respond(request):
        text = request["messages"][-1]["content"].split("Input:\n", 1)[1]
        return json.dumps({"entities": gold_by_text.get(text, [])}, ensure_ascii=False)

    return respond


class FakeOpenAI:
    def __init__(self, responder=None, logprob=None):
        self.responder = responder or (lambda req: '{"entities": []}')
        self.logprob = logprob  # when set, every token gets this logprob
        self.script: list[dict] = []
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    step = fake.script.pop(0) if fake.script else {}
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(step.get("delay", 0) + fake.latency)
                    if "status" in step:
                        return self._send(step["status"], {"error": {"message": step.get("message", "fake error"), "type": "fake"}}, step.get("headers", {}))
                    content = step["content"] if "content" in step else fake.responder(body)
                    self._send(200, fake._completion(body, content))
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.latency = 0.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _completion(self, request, content):
        tokens = [content[i : i + 4] for i in range(0, len(content), 4)]
        logprobs = None
        if self.logprob is not None and request.get("logprobs"):
            logprobs = {"content": [{"token": t, "logprob": self.logprob, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens]}
        prompt_chars = sum(len(m["content"]) for m in request["messages"])
        return {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(tokens), "total_tokens": prompt_chars // 4 + len(tokens)},
        }

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
