"""What the endpoint bills, attempt by attempt (issue 15.5: every billed token counts).

The openai client retries inside one ``create`` call, so a call's bill is read where every attempt
passes: the HTTP transport. For each attempt of a chat completion:

* a reply with ``usage`` (a good answer, one cut at ``max_tokens``, one we cannot parse): the
  tokens it reports;
* a 200 reply without ``usage``, or no reply at all after the request was sent (read timeout, the
  connection dropped mid-reply): the worst case, the prompt's counted tokens plus ``max_tokens``;
* an error status (the endpoint refused or failed the request) or a request never sent (connect
  error, pool timeout): nothing;
* a streamed reply (``text/event-stream``): left unread here; its reader adds the usage the
  stream reported, or the worst case when it reported none (a stream cut early included)
  (``add_streamed``).

Attempts are added to the calling thread's open ``Bill`` (``billing``), so concurrent calls on one
client keep their bills apart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2

# Failures after the request went out: the endpoint may have computed (and billed) the reply.
_SENT = (httpx2.ReadTimeout, httpx2.WriteTimeout, httpx2.ReadError, httpx2.RemoteProtocolError)


@dataclass
class Bill:
    """The attempts of one call: reported tokens, and attempts with nothing reported."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    unreported: int = 0  # attempts billed at the worst case
    attempts: int = 0

    def usd(
        self, prices: tuple[float, float] | None, worst_prompt_tokens: int, max_tokens: int
    ) -> float:
        if prices is None:
            return 0.0
        p = self.prompt_tokens + self.unreported * worst_prompt_tokens
        c = self.completion_tokens + self.unreported * max_tokens
        return (p * prices[0] + c * prices[1]) / 1e6


_local = threading.local()


@contextmanager
def billing() -> Iterator[Bill]:
    """Collect the bill of the chat completions this thread sends inside the block."""
    bill = Bill()
    outer = getattr(_local, "bill", None)
    _local.bill = bill
    try:
        yield bill
    finally:
        _local.bill = outer


def add_streamed(usage: tuple[int, int] | None) -> None:
    """Add a streamed reply's reported (prompt, completion) tokens to the calling thread's open
    bill, or the worst case if it reported none."""
    bill = getattr(_local, "bill", None)
    if bill is None:
        return
    if usage is None:
        bill.unreported += 1
    else:
        bill.prompt_tokens += usage[0]
        bill.completion_tokens += usage[1]


# The response extension that holds a 200 chat-completion body as parsed here: its reader
# uses it instead of parsing the body a second time (0.1 ms CPU a call with logprobs).
PARSED_BODY = "alllabel.parsed_body"


def parse(body: bytes) -> dict | None:
    """A chat-completion body as JSON, or None if it is not a JSON object."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def usage_of(data: dict | None) -> tuple[int, int] | None:
    """(prompt, completion) tokens a parsed chat-completion body reports; None if it reports none."""
    usage = (data or {}).get("usage") or {}
    if not isinstance(usage, dict) or usage.get("prompt_tokens") is None:
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class MeteredTransport(httpx2.BaseTransport):
    """An HTTP transport that adds every chat-completion attempt to the thread's ``Bill``."""

    def __init__(self, inner: httpx2.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        bill = getattr(_local, "bill", None)
        if bill is None or not request.url.path.endswith("/chat/completions"):
            return self.inner.handle_request(request)
        bill.attempts += 1
        try:
            response = self.inner.handle_request(request)
        except _SENT:
            bill.unreported += 1
            raise
        if response.status_code != 200:
            return response
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response  # billed by its reader (``add_streamed``)
        try:
            body = response.read()
        except _SENT:
            bill.unreported += 1
            raise
        data = parse(body)
        usage = usage_of(data)
        if usage is None:
            bill.unreported += 1
        else:
            bill.prompt_tokens += usage[0]
            bill.completion_tokens += usage[1]
        # ``body`` is decoded now: the headers must not say it is still compressed.
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        extensions = {**response.extensions, PARSED_BODY: data} if data else response.extensions
        return httpx2.Response(
            200, headers=headers, content=body, request=request, extensions=extensions
        )

    def close(self) -> None:
        self.inner.close()
