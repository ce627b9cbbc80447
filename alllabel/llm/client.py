"""OpenAI-compatible chat client: the client's own retries, a persistent cache, usage and cost.

Works with any server that speaks the OpenAI chat-completions API (OpenAI, Azure OpenAI's
v1 endpoint, DeepSeek, vLLM, Ollama, llama.cpp) through the official ``openai`` package.

Retries are the openai client's (``max_retries``): 408, 409, 429, 5xx, timeouts and connection
errors, exponential backoff 0.5 s x 2^n capped at 8 s with up to 25 % jitter; a ``Retry-After``
(or ``retry-after-ms``, or an HTTP date) of up to 120 s is waited exactly, a longer one is not
retried at all (the call fails; the task is retried on the next run). What we add on top, because
the client cannot: dropping ``logprobs`` or falling back from ``json_schema`` to ``json_object``
(and to no ``response_format``) when an endpoint refuses them, refusing replies cut at
``max_tokens``, the SQLite cache, and usage/cost accounting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable

import httpx2
import openai
from openai._constants import DEFAULT_CONNECTION_LIMITS, RAW_RESPONSE_HEADER
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from alllabel.llm.billing import PARSED_BODY, Bill, MeteredTransport, billing
from alllabel.llm.cache import Completion, LLMCache, Usage
from alllabel.llm.concurrency import (
    TIMED_OUT,
    AdaptiveLimit,
    TimeoutAnswer,
    open_connections,
    run_bounded,
    work_units,
)
from alllabel.llm.config import KNOWN_PRICES, LLMConfig, token_cost
from alllabel.llm.endpoint import discover
from alllabel.llm.formats import FormatFallback
from alllabel.llm.replies import LLMError, completion_from_json, context_hint
from alllabel.llm.stream import StreamFallback, estimate, read_reply

log = logging.getLogger(__name__)

__all__ = [
    "KNOWN_PRICES",
    "Completion",
    "LLMCache",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "Usage",
    "completion_from_json",
    "run_bounded",
    "token_cost",
]
POOL_SIZE = 8
# Statuses with which endpoints refuse a response_format they do not support (llama.cpp: 500).
_REFUSES_FORMAT = {400, 422, 500, 501}
_STRENGTH = {"json_schema": 2, "json_object": 1, "none": 0}
# Seconds to open a connection: a server that accepts none within this is down or swamped (a
# queued completion waits after connecting, under the full timeout).
CONNECT_TIMEOUT = 10.0


class LLMClient(FormatFallback, StreamFallback):
    def __init__(self, config: LLMConfig, cache: LLMCache | None = None):
        if not config.configured:
            raise ValueError(
                "no LLM configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for other endpoints)"
            )
        config.check()
        self.config = config
        self.cache = cache
        self.usage = Usage(batch_price_factor=config.batch_price_factor)
        self._ssl = httpx2.create_ssl_context()  # made once: a context per client costs ~30 ms
        self.openai = self._new_client()
        # One connection pool per POOL_SIZE concurrent calls: httpcore scans every connection of
        # its pool on each request and release, the largest client CPU cost at concurrency 64.
        self._pools = [self.openai] + [
            self._new_client() for _ in range(1, -(-config.concurrency // POOL_SIZE))
        ]
        self._local, self._next_pool, self._pool_lock = threading.local(), 0, threading.Lock()
        # Several pools: a bulk run's concurrency, its connections opened while it is planned.
        self.warming = len(self._pools) > 1 and open_connections(self._pools, config.concurrency)
        self._logprobs = config.logprobs
        self._stream, self._stream_usage = config.stream, True
        self._format = config.response_format
        self._format_confirmed = False
        self._endpoint = config.base_url or "https://api.openai.com/v1"
        known = cache.known_format(self._endpoint, config.model) if cache is not None else None
        if known is not None and _STRENGTH[known] < _STRENGTH[self._format]:
            # This endpoint refused the stronger format in an earlier run: not probed again.
            self._format, self._format_confirmed = known, True
            log.info(
                "response_format %s for %s (refused %s before)",
                known,
                config.model,
                config.response_format,
            )
        self._recall_streaming()
        self.limit = AdaptiveLimit(config.concurrency, config.timeout)
        # Where span confidence comes from: "logprobs", or why not (said once, in the log).
        self.confidence_source = "logprobs" if config.logprobs else "similarity (logprobs off)"
        if config.base_url:
            reported = discover(
                config.base_url, config.model, config.api_key, context_set=bool(config.context)
            )
            if reported.context and not config.context:
                config.context = reported.context
                config.fit_context(reported.context, "reported by the endpoint")
            if reported.slots:
                self.limit.set_slots(reported.slots)

    def _new_client(self) -> openai.OpenAI:
        c = self.config
        return openai.OpenAI(
            api_key=c.api_key or "not-needed",
            base_url=c.base_url,
            timeout=httpx2.Timeout(c.timeout, connect=min(c.timeout, CONNECT_TIMEOUT)),
            max_retries=c.max_retries,
            # Every attempt's bill is read in the transport (``alllabel.llm.billing``).
            http_client=openai.DefaultHttpxClient(
                transport=TimeoutAnswer(
                    MeteredTransport(
                        httpx2.HTTPTransport(verify=self._ssl, limits=DEFAULT_CONNECTION_LIMITS)
                    )
                )
            ),
        )

    def _pool(self) -> openai.OpenAI:
        """This thread's client (threads are spread evenly over the pools)."""
        client = getattr(self._local, "client", None)
        if client is None:
            with self._pool_lock:
                client = self._local.client = self._pools[self._next_pool % len(self._pools)]
                self._next_pool += 1
        return client

    def report(self) -> dict:
        """Usage and cost, with how the endpoint is being used: the concurrency in use, the
        response_format after any fallback, and where span confidence comes from."""
        return {
            **self.usage.as_dict(self.config.prices()),
            **self.limit.as_dict(),
            "response_format": self._format,
            "confidence_source": self.confidence_source,
            "context_tokens": self.config.max_prompt_tokens + self.config.max_tokens,
        }

    @property
    def response_format(self) -> str:
        """The response_format in use now (after any fallback)."""
        return self._format

    def params(self, messages: list[dict], schema: dict | None = None) -> dict:
        """The request body: ``schema`` (``prompting.response_schema``) is sent when the endpoint
        takes structured outputs; otherwise JSON mode, or nothing."""
        p = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self._format == "json_schema" and schema is not None:
            p["response_format"] = schema
        elif self._format != "none":
            p["response_format"] = {"type": "json_object"}
        if self._logprobs:
            # llama.cpp returns no log-probabilities for a bare ``logprobs: true``.
            p["logprobs"], p["top_logprobs"] = True, 1
        return p

    def cache_key(self, messages: list[dict]) -> str:
        """The same answer whatever the JSON mechanism or logprobs: keyed on the prompt and
        sampling. (Identical to the keys of caches written before structured outputs.)"""
        p = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.config.response_format != "none":
            p["response_format"] = {"type": "json_object"}
        return hashlib.sha256(
            json.dumps(p, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()

    def complete(
        self,
        messages: list[dict],
        validate: Callable[[str], object] | None = None,
        *,
        schema: dict | None = None,
        cache_only: bool = False,
        prompt_tokens: int | None = None,
    ) -> Completion:
        """One chat completion (cached). ``validate(text)`` may raise: the reply is then not
        cached, so a malformed answer is asked for again next time; what it returns is kept in
        ``Completion.parsed`` (fresh answers only). ``cache_only``: never call the endpoint
        (answers bought through the Batch API are read back this way).

        What the endpoint billed for the call (every attempt, ``alllabel.llm.billing``) is in
        ``Completion.billed_usd``, or in the raised exception's ``billed_usd``: a truncated or
        unparseable reply is billed too. ``prompt_tokens`` (the prompt as counted) prices an
        attempt that reported nothing at its worst case."""
        key = self.cache_key(messages)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.add(cache_hits=1)
                return hit
        if cache_only:
            raise LLMError(
                "no answer for this prompt in the LLM cache (the batch did not return it)",
                retryable=True,
            )
        started = time.monotonic()
        # What a stream without the server's usage is counted with (the caller's count).
        self._local.prompt_tokens = prompt_tokens or estimate(messages)
        with billing() as bill:
            try:
                result = self._limited_call(messages, schema)
            except Exception as e:
                e.billed_usd = self._charge(bill, messages, prompt_tokens)
                prompt, reply = getattr(e, "usage", None) or (0, 0)  # a cut reply's tokens
                self.usage.add(
                    failures=1,
                    prompt_tokens=prompt,
                    completion_tokens=reply,
                    tokens_estimated=int(getattr(e, "estimated", False)),
                    loops_cut=int(getattr(e, "looped", False)),
                )
                raise
        self._note_confidence(result)
        result.billed_usd = self._charge(bill, messages, prompt_tokens)
        self.usage.add(
            calls=1,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            call_seconds=time.monotonic() - started,  # retries included: the wait a task sees
            tokens_estimated=int(result.estimated),
        )
        if validate is not None:
            try:
                result.parsed = validate(result.text)
            except Exception as e:
                e.billed_usd = result.billed_usd  # an unparseable reply is billed all the same
                raise
        if self.cache is not None:
            self.cache.put(key, result)
        return result

    def _limited_call(self, messages: list[dict], schema: dict | None) -> Completion:
        """``_call`` within the adaptive concurrency limit, telling it how the endpoint kept up.
        A timed-out call lowers the limit and waits for a slot under it before it is sent again
        (``TimeoutAnswer``), up to ``max_retries`` times."""
        for attempt in range(self.config.max_retries + 1):
            with self.limit.slot():
                start = time.monotonic()
                try:
                    result = self._call(messages, schema)
                except LLMError as e:
                    interrupted = getattr(e, "interrupted", False)
                    if not (e.timed_out or interrupted):
                        raise
                    self._count_unanswered(e)
                    if interrupted and not self.limit.fixed:
                        log.warning(
                            "the LLM endpoint ends a reply when another call waits for its only "
                            "slot (llama-cpp-python's server): one call at a time from now on"
                        )
                        self.limit.set_slots(1)
                    self.limit.timed_out()
                    if attempt == self.config.max_retries:
                        raise LLMError(
                            f"timed out after {self.config.timeout:.0f}s ({attempt} retries)",
                            retryable=True,
                        ) from e
                    self.usage.add(retries=1)
                    continue
                work = work_units(result.prompt_tokens, result.completion_tokens)
                self.limit.done((time.monotonic() - start) / (1 + result.retries), work)
                return result
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _note_confidence(self, result: Completion) -> None:
        """Say once when logprobs were asked for and none came back."""
        if self._logprobs and not result.logprobs and self.confidence_source == "logprobs":
            self.confidence_source = "similarity (the endpoint returned no logprobs)"
            log.warning(
                "the endpoint returned no logprobs: span confidence comes from demonstration "
                "similarity instead"
            )

    def _charge(self, bill: Bill, messages: list[dict], prompt_tokens: int | None) -> float:
        """US$ billed for one call's attempts; added to ``usage.billed_usd``."""
        if prompt_tokens is None:  # not counted by the caller: 2 characters a token (high side)
            prompt_tokens = 2 * estimate(messages)
        usd = bill.usd(self.config.prices(), prompt_tokens, self.config.max_tokens)
        self.usage.add(billed_usd=usd)
        return usd

    @staticmethod
    def _post(client: openai.OpenAI, params: dict, probing: bool = False):
        """POST /chat/completions through the client's own machinery (auth, timeouts, retries,
        Retry-After), minus ``with_raw_response.create``'s walk of our plain JSON body against the
        typed-dict annotations (the largest CPU cost per call at concurrency 64, by yappi). A
        response_format probe is not retried (a refusal must not cost the backoff schedule)."""
        options = {"headers": {RAW_RESPONSE_HEADER: "true"}, "security": {"bearer_auth": True}}
        return client.post(
            "/chat/completions",
            body=params,
            cast_to=ChatCompletion,
            options={**options, "max_retries": 0} if probing else options,
            stream=bool(params.get("stream")),  # the body is read by ``read_reply``
            stream_cls=openai.Stream[ChatCompletionChunk],
        )

    def _send(self, params: dict, probing: bool):
        """POST the request; a probe (no retries) that meets a transient failure is sent again
        with the usual retries, so only a format refusal comes back from a probe at once."""
        try:
            return self._post(self._pool(), params, probing)
        except (openai.APITimeoutError, openai.APIConnectionError):
            if not probing:
                raise
        except openai.APIStatusError as e:
            if (
                not probing
                or e.status_code in _REFUSES_FORMAT
                or not (e.status_code in (408, 409, 429) or e.status_code >= 500)
            ):
                raise
        return self._post(self._pool(), params)

    def _call(self, messages: list[dict], schema: dict | None) -> Completion:
        params = self.params(messages, schema)
        self._stream_params(params)
        fmt = (params.get("response_format") or {}).get("type")
        probing = fmt == "json_schema" and not self._format_confirmed
        try:
            raw = self._send(params, probing)
        except openai.APITimeoutError as e:
            # Read timeouts come back as a TIMED_OUT answer: this is a connection not opened (or
            # a request not written) in time, already tried max_retries times by the client.
            raise LLMError(
                f"the LLM endpoint took no request within {CONNECT_TIMEOUT:.0f}s, "
                f"{self.config.max_retries + 1} tries: is the server up and not swamped?",
                retryable=True,
            ) from e
        except openai.APIConnectionError as e:
            raise LLMError(f"cannot reach the LLM endpoint ({e})", retryable=True) from e
        except openai.APIStatusError as e:
            status = e.status_code
            text = str(e).lower()
            if e.response.headers.get(TIMED_OUT):
                err = LLMError(f"timed out after {self.config.timeout:.0f}s", retryable=True)
                err.timed_out = True
                raise err from e
            if status == 400 and self._logprobs and "logprob" in text:
                log.warning(
                    "endpoint rejects logprobs; confidence will come from demonstration similarity"
                )
                self._logprobs = False
                self.confidence_source = "similarity (the endpoint refuses logprobs)"
                return self._call(messages, schema)
            if status in (400, 422) and self._stream and re.search(r"\bstream", text):
                return self._stream_refused(text, messages, schema)
            if probing and status in _REFUSES_FORMAT:
                return self._fall_back("json_schema", "json_object", status, messages, schema)
            if fmt == "json_object" and status in (400, 422) and "response_format" in text:
                return self._fall_back("json_object", "none", status, messages, schema)
            retryable = status in (408, 409, 429) or status >= 500
            hint = {
                401: " (check OPENAI_API_KEY)",
                404: " (check ALLABEL_LLM_MODEL and OPENAI_BASE_URL)",
            }.get(status, "")
            if status == 400 and "context" in text:
                hint = context_hint(text, self.config)
            raise LLMError(
                f"HTTP {status} from the LLM endpoint{hint}: {e.message}",
                retryable=retryable,
                status=status,
            ) from e
        if raw.retries_taken:
            self.usage.add(retries=raw.retries_taken)
        if probing:
            self._format_confirmed = True
        if (parsed := raw.http_response.extensions.get(PARSED_BODY)) is not None:
            result = completion_from_json(parsed)  # unstreamed, parsed once already for its bill
        else:
            source = str(messages[-1].get("content", "")) if messages else ""
            result = read_reply(raw.http_response, getattr(self._local, "prompt_tokens", 0), source)
        result.retries = raw.retries_taken
        return result
