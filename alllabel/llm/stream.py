"""Chat completions read as they are written (``stream: true``), so a reply that loops is cut as
soon as it starts repeating instead of running to ``max_tokens`` (a small local model looped on a
MOF paragraph for 2,048 tokens, 138 s, before this).

A loop is one piece of text said ``LOOP_TIMES`` times in a row at the end of the reply, covering
at least ``LOOP_CHARS`` characters (the same span item over and over, the same few lines cycling,
one token repeated), and said more often than the prompt's input justifies (``loop_unit``). So a
legitimate reply is never cut: one whose every span item is said at most as often as its text
stands in the input (once, when it names its ``occurrence``), and whose other repeats copy the input.
A list of distinct spans never repeats at all.

Usage: the server's own count when it sends one (``stream_options.include_usage``: OpenAI, vLLM,
llama.cpp's llama-server); otherwise (llama-cpp-python's server, any stream cut by us) the prompt
as the caller counted it and one token per streamed piece, and the usage says the tokens are an
estimate (``tokens_estimated``); the spend takes the worst case for such a call, as for any reply
without usage, so a cap is never passed on an estimate. Log-probabilities come per piece (OpenAI, vLLM and llama.cpp send them in the stream).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import httpx2

from alllabel.llm.billing import add_streamed
from alllabel.llm.cache import Completion
from alllabel.llm.replies import LLMError, completion_from_json, truncation_advice

log = logging.getLogger("alllabel.llm.client")  # with the client's other fallbacks

LOOP_TIMES = 8  # a piece said this many times in a row at the end of the reply is a loop
LOOP_CHARS = 160  # ...when the repeats cover at least this many characters
LOOP_TAIL = 1600  # characters looked at (pieces up to LOOP_TAIL / LOOP_TIMES long)
CHECK_EVERY = 48  # characters written between two checks


# A flat JSON object (a span item), strings with braces or quotes in them included.
_ITEM = re.compile(r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')


def loop_unit(text: str, source: str = "") -> str | None:
    """The piece the reply ends by repeating (a loop), or None.

    Never a legitimate reply's: a repeat is a loop only once the reply says more than ``source``
    (the prompt's input) justifies. A piece holding span items: once one of them is said more
    often than its text stands in the input ("compound 1" nine times gives nine identical
    ``{"label": ..., "text": "1"}`` items when a reply leaves out ``occurrence``; an item with
    ``occurrence`` names one place and is justified once). Any other piece (a token, whitespace,
    a stretch inside a span's text): once the whole repeated stretch is no longer in the input."""
    end = text[-LOOP_TAIL:]
    if len(end) < LOOP_CHARS:
        return None
    for size in range(1, len(end) // LOOP_TIMES + 1):
        unit, times = end[-size:], 1
        while end[-(times + 1) * size : len(end) - times * size] == unit:
            times += 1
        if times >= LOOP_TIMES and times * size >= LOOP_CHARS:
            return None if _justified(text, size, source) else unit
    return None


def _justified(text: str, size: int, source: str) -> bool:
    """The reply's repeat of period ``size`` at its end is still what the input holds."""
    unit = text[-size:]
    # The unit is cut anywhere in an item: twice over, it holds each of its items whole.
    items = [_span(m.group()) for m in _ITEM.finditer(unit + unit)]
    items = [i for i in items if i is not None]
    if items:
        said: dict[tuple, int] = {}
        for found in _ITEM.finditer(text):  # every item of the reply, not only the repeats
            key = _span(found.group())
            if key is not None:
                said[key] = said.get(key, 0) + 1
        return all(said.get(i, 0) <= _justifies(i, source) for i in items)
    start = len(text) - size  # the whole run of the period, back to where it began
    while start > 0 and text[start - 1] == text[start - 1 + size]:
        start -= 1
    return _in_source(text[start:], source)


def _span(item: str) -> tuple | None:
    """(label, text, occurrence) of a span item, or None when it is not one."""
    try:
        data = json.loads(item)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    return (str(data.get("label")), data["text"], json.dumps(data.get("occurrence")))


def _justifies(item: tuple, source: str) -> int:
    """How often the input allows ``item`` to be said: once per place its text stands (counted
    as a substring, the most lenient count; the aligner decides what it matches), once at most
    when it names its ``occurrence``."""
    places = source.count(item[1]) if item[1] else 0
    return min(places, 1) if item[2] != "null" else places


def _in_source(run: str, source: str) -> bool:
    """``run`` (part of the reply) copies the input, as written or JSON-escaped."""
    if not source:
        return False
    if run in source:
        return True
    for ascii_only in (True, False):
        if run in json.dumps(source, ensure_ascii=ascii_only)[1:-1]:
            return True
    return False


def loop_advice(unit: str, tokens: int) -> str:
    """What to do about a reply cut because it looped (not a long answer: the cap is not at fault)."""
    if "{" in unit:  # show a repeated JSON item from its start
        unit = unit[unit.index("{") :] + unit[: unit.index("{")]
    shown = unit.strip()[:60] or repr(unit)
    return (
        f"the model was repeating itself ({shown!r} over and over), cut after {tokens} tokens: a "
        "loop, not a long answer, so ALLABEL_LLM_MAX_TOKENS is not the cause; use a stronger "
        "model, more demonstrations (--k), or ALLABEL_LLM_TEMPERATURE 0.2-0.5"
    )


@dataclass
class _Reply:
    """What a stream has said so far."""

    prompt_estimate: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[tuple[str, float]] = field(default_factory=list)
    pieces: int = 0
    chars: int = 0
    finish: str | None = None
    usage: tuple[int, int] | None = None

    @property
    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens: the server's count, else the estimate."""
        return self.usage or (self.prompt_estimate, self.pieces)

    def add(self, chunk: dict) -> None:
        if chunk.get("error"):  # vLLM, OpenAI: a failure after the stream started
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise LLMError(f"the LLM endpoint failed mid-reply: {message}", retryable=True)
        usage = chunk.get("usage") or {}
        if usage.get("prompt_tokens") is not None:
            self.usage = (usage["prompt_tokens"] or 0, usage.get("completion_tokens") or 0)
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
                self.pieces += 1
                self.chars += len(content)
            for t in (choice.get("logprobs") or {}).get("content") or []:
                self.logprobs.append((t["token"], float(t["logprob"])))
            self.finish = choice.get("finish_reason") or self.finish


def read_reply(response: httpx2.Response, prompt_estimate: int, source: str = "") -> Completion:
    """The Completion a chat-completion response carries, streamed or not (a server that ignores
    ``stream`` answers with one JSON body). Raises ``LLMError``: ``truncated`` for a loop or a
    reply cut at the cap, ``timed_out`` when the stream stalls past the read timeout,
    ``interrupted`` when the server ended the stream unfinished. ``source``: the prompt's input,
    so a span the input repeats is not taken for a loop. The tokens (reported, or the
    estimate) are in the Completion or the error's ``usage``; the bill (``alllabel.llm.billing``)
    takes the reported ones, or the worst case."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return completion_from_json(response.json())
    reply = _Reply(prompt_estimate)
    try:
        _read(response, reply, source)
    except LLMError as e:
        e.usage = reply.tokens
        e.estimated = reply.usage is None
        raise
    finally:
        response.close()  # a cut stream: the server sees the client go and stops (llama.cpp)
        add_streamed(reply.usage)  # none reported: billed at the worst case, to stay under caps
    text = "".join(reply.parts)
    if reply.finish == "length":
        raise LLMError(
            truncation_advice(text),
            retryable=False,
            truncated=True,
            usage=reply.tokens,
        )
    return Completion(
        text=text,
        prompt_tokens=reply.tokens[0],
        completion_tokens=reply.tokens[1],
        logprobs=reply.logprobs or None,
        estimated=reply.usage is None,
    )


def estimate(messages: list[dict]) -> int:
    """Prompt tokens of ``messages`` when the caller did not count them: 4 characters a token."""
    return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 8


def _read(response: httpx2.Response, reply: _Reply, source: str = "") -> None:
    """Read the stream into ``reply``; cut it at the first sign of a loop."""
    checked = 0
    try:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                # Nothing is read past it: llama-cpp-python closes the connection right after an
                # interrupted stream's [DONE] without ending the body (an "incomplete chunked read").
                break
            reply.add(json.loads(data))
            if reply.chars - checked >= CHECK_EVERY:
                checked = reply.chars
                unit = loop_unit("".join(reply.parts), source)
                if unit is not None:
                    err = LLMError(
                        loop_advice(unit, reply.tokens[1]), retryable=False, truncated=True
                    )
                    err.looped = True
                    raise err
    except httpx2.TimeoutException as e:
        err = LLMError("the reply stalled past the timeout", retryable=True)
        err.timed_out = True
        raise err from e
    except (httpx2.TransportError, ValueError) as e:
        raise LLMError(f"the reply broke off mid-stream ({e})", retryable=True) from e
    if reply.finish is None:
        # llama-cpp-python's server ends a stream this way when another request waits for its
        # only slot (``interrupt_requests``): the reply is unfinished, not an answer.
        err = LLMError(
            "the endpoint ended the reply unfinished (another call waited for its only slot)",
            retryable=True,
        )
        err.interrupted = True
        raise err


class StreamFallback:
    """Streaming as far as the endpoint takes it, remembered per endpoint and model in the LLM
    cache file like the response_format (``LLMClient`` inherits this). Needs ``_stream``,
    ``_stream_usage``, ``_call``, ``cache``, ``config``, ``_endpoint``."""

    def _recall_streaming(self) -> None:
        key = self.config.model + " stream"
        known = self.cache.known_format(self._endpoint, key) if self.cache is not None else None
        if known is not None:  # refused before: "off" (no streaming) or "no-usage"
            self._stream = self._stream and known != "off"
            self._stream_usage = known != "no-usage"

    def _stream_params(self, params: dict) -> None:
        if self._stream:
            params["stream"] = True
            if self._stream_usage:
                params["stream_options"] = {"include_usage": True}

    def _count_unanswered(self, e: LLMError) -> None:
        """The tokens of an attempt that is sent again (a stalled or interrupted stream)."""
        if e.usage:
            self.usage.add(
                prompt_tokens=e.usage[0],
                completion_tokens=e.usage[1],
                tokens_estimated=int(getattr(e, "estimated", False)),
            )

    def _stream_refused(self, text: str, messages: list[dict], schema: dict | None) -> Completion:
        """The endpoint refuses ``stream_options`` (then streams without usage) or streaming:
        fall back, remember it for this endpoint and model, and ask again."""
        if "stream_options" in text and self._stream_usage:
            self._stream_usage, remembered = False, "no-usage"
        else:
            self._stream, remembered = False, "off"
        log.warning(
            "the endpoint refuses %s from now on (%s)",
            "streaming: none" if remembered == "off" else "stream_options: streaming without usage",
            "a looping reply runs to the token cap"
            if remembered == "off"
            else "the tokens of a stream are estimated",
        )
        if self.cache is not None:
            self.cache.remember_format(self._endpoint, self.config.model + " stream", remembered)
        return self._call(messages, schema)
