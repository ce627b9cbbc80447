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
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import httpx2
import openai
from openai._constants import RAW_RESPONSE_HEADER
from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)

# US$ per million tokens (input, output); used for estimates only. Override with
# ALLABEL_PRICE_INPUT / ALLABEL_PRICE_OUTPUT for other models or new prices.
KNOWN_PRICES = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "deepseek-chat": (0.27, 1.10)}
# Context windows (prompt + reply tokens) of models we know; others are the user's responsibility.
KNOWN_CONTEXT = {"gpt-4o": 128_000, "gpt-4o-mini": 128_000, "deepseek-chat": 64_000}
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
POOL_SIZE = 8
# Statuses with which endpoints refuse a response_format they do not support (llama.cpp: 500).
_REFUSES_FORMAT = {400, 422, 500, 501}


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else None


@dataclass
class LLMConfig:
    """Everything that decides how the LLM is called. ``from_env`` documents the variables."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o"
    temperature: float = 0.0
    max_tokens: int = 2048
    timeout: float = 60.0
    max_retries: int = 5
    concurrency: int = 4
    response_format: str = "json_schema"
    logprobs: bool = True
    price_input: float | None = None
    price_output: float | None = None
    max_prompt_tokens: int = 8000
    token_margin: float | None = None
    batch: bool = False
    batch_poll: float = 30.0
    batch_price_factor: float = 0.5

    @classmethod
    def from_env(cls, **overrides) -> "LLMConfig":
        """OPENAI_API_KEY, OPENAI_BASE_URL, ALLABEL_LLM_MODEL, ALLABEL_LLM_TEMPERATURE,
        ALLABEL_LLM_MAX_TOKENS, ALLABEL_LLM_TIMEOUT, ALLABEL_LLM_MAX_RETRIES,
        ALLABEL_LLM_CONCURRENCY, ALLABEL_LLM_RESPONSE_FORMAT (ALLABEL_LLM_JSON_MODE=0 means
        "none"), ALLABEL_LLM_LOGPROBS, ALLABEL_PRICE_INPUT, ALLABEL_PRICE_OUTPUT,
        ALLABEL_MAX_PROMPT_TOKENS, ALLABEL_TOKEN_MARGIN, ALLABEL_LLM_BATCH,
        ALLABEL_LLM_BATCH_POLL. Keyword overrides win over the environment."""
        env = os.environ
        fmt = env.get("ALLABEL_LLM_RESPONSE_FORMAT") or (
            "json_schema" if _env_bool("ALLABEL_LLM_JSON_MODE", True) else "none"
        )
        cfg = cls(
            api_key=env.get("OPENAI_API_KEY") or None,
            base_url=env.get("OPENAI_BASE_URL") or None,
            model=env.get("ALLABEL_LLM_MODEL", "gpt-4o"),
            temperature=float(env.get("ALLABEL_LLM_TEMPERATURE", 0)),
            max_tokens=int(env.get("ALLABEL_LLM_MAX_TOKENS", 2048)),
            timeout=float(env.get("ALLABEL_LLM_TIMEOUT", 60)),
            max_retries=int(env.get("ALLABEL_LLM_MAX_RETRIES", 5)),
            concurrency=int(env.get("ALLABEL_LLM_CONCURRENCY", 4)),
            response_format=fmt.strip().lower(),
            logprobs=_env_bool("ALLABEL_LLM_LOGPROBS", True),
            price_input=_env_float("ALLABEL_PRICE_INPUT"),
            price_output=_env_float("ALLABEL_PRICE_OUTPUT"),
            max_prompt_tokens=int(env.get("ALLABEL_MAX_PROMPT_TOKENS", 8000)),
            token_margin=_env_float("ALLABEL_TOKEN_MARGIN"),
            batch=_env_bool("ALLABEL_LLM_BATCH", False),
            batch_poll=float(env.get("ALLABEL_LLM_BATCH_POLL", 30)),
        )
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"unknown LLM setting {key!r}")
            if value is not None:
                setattr(cfg, key, value)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ValueError("LLM concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(
                f"ALLABEL_LLM_RESPONSE_FORMAT must be one of {', '.join(RESPONSE_FORMATS)}, got {self.response_format!r}"
            )
        context = KNOWN_CONTEXT.get(self.model)
        if context and self.max_prompt_tokens + self.max_tokens > context:
            raise ValueError(
                f"{self.model} holds {context} tokens: ALLABEL_MAX_PROMPT_TOKENS ({self.max_prompt_tokens}) plus "
                f"ALLABEL_LLM_MAX_TOKENS ({self.max_tokens}) must not exceed it"
            )

    @property
    def configured(self) -> bool:
        """An LLM is usable: a key, or a base URL (local servers often need no key)."""
        return bool(self.api_key or self.base_url)

    def prices(self) -> tuple[float, float] | None:
        if self.price_input is not None and self.price_output is not None:
            return self.price_input, self.price_output
        return KNOWN_PRICES.get(self.model)


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[tuple[str, float]] | None = None
    cached: bool = False
    price_factor: float = 1.0  # 0.5 for answers bought through the Batch API
    retries: int = field(
        default=0, compare=False
    )  # the client's retries for this call (not stored)
    parsed: object = field(
        default=None, compare=False, repr=False
    )  # what ``validate`` returned (not stored)

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        c = token_cost(self.prompt_tokens, self.completion_tokens, prices)
        return None if c is None else c * self.price_factor


class LLMError(RuntimeError):
    """A call failed for good (after the client's retries, or at once for errors a retry cannot fix)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def token_cost(
    prompt_tokens: int, completion_tokens: int, prices: tuple[float, float] | None
) -> float | None:
    """US$ for a token count at (input, output) prices per million tokens; None if prices are unknown."""
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


@dataclass
class Usage:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_calls: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    batch_price_factor: float = 0.5
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        online = token_cost(self.prompt_tokens, self.completion_tokens, prices)
        batch = token_cost(self.batch_prompt_tokens, self.batch_completion_tokens, prices)
        return None if online is None else online + self.batch_price_factor * batch

    def as_dict(self, prices=None) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not f.name.startswith("_") and f.name != "batch_price_factor"
        }
        d["cost_usd"] = self.cost(prices)
        return d


class LLMCache:
    """SQLite cache of successful completions, keyed on model, messages and parameters.

    The same database keeps the Batch API's bookkeeping (``alllabel.llm.batch``)."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash (not a power cut) without an fsync each.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.commit()
        self._lock = threading.Lock()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        d["logprobs"] = [tuple(x) for x in d["logprobs"]] if d.get("logprobs") is not None else None
        return Completion(**{**d, "cached": True})

    def put(self, key: str, c: Completion) -> None:
        value = {
            "text": c.text,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "logprobs": c.logprobs,
        }
        if c.price_factor != 1.0:
            value["price_factor"] = c.price_factor
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions VALUES (?, ?, ?)",
                (key, json.dumps(value), time.time()),
            )
            self._db.commit()

    def execute(self, sql: str, params: tuple = (), *, many: bool = False) -> list[tuple]:
        """Run one statement and commit (the batch bookkeeping's access)."""
        with self._lock:
            cur = self._db.executemany(sql, params) if many else self._db.execute(sql, params)
            rows = cur.fetchall()
            self._db.commit()
        return rows

    def close(self) -> None:
        with self._lock:
            self._db.close()


def completion_from_json(data: dict) -> Completion:
    """A Completion from a chat-completion body (online reply or Batch API output line)."""
    choices = data.get("choices") or []
    if not choices:
        raise LLMError("the LLM returned no choices", retryable=False)
    choice = choices[0]
    if choice.get("finish_reason") == "length":
        raise LLMError(
            "the reply was cut at ALLABEL_LLM_MAX_TOKENS: raise it, or lower ALLABEL_MAX_PROMPT_TOKENS so long tasks are cut into smaller windows",
            retryable=False,
        )
    text = (choice.get("message") or {}).get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    logprobs = [(t["token"], float(t["logprob"])) for t in content] if content else None
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        logprobs=logprobs,
    )


class LLMClient:
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
        # Probing a response_format: no retries, a refusal must not cost the backoff schedule.
        self._probe = self.openai.with_options(max_retries=0)
        # One connection pool per POOL_SIZE concurrent calls: httpcore scans every connection of
        # its pool on each request and release, the largest client CPU cost at concurrency 64.
        self._pools = [self.openai] + [
            self._new_client() for _ in range(1, -(-config.concurrency // POOL_SIZE))
        ]
        self._local = threading.local()
        self._next_pool = 0
        self._pool_lock = threading.Lock()
        self._logprobs = config.logprobs
        self._format = config.response_format
        self._format_confirmed = False

    def _new_client(self) -> openai.OpenAI:
        c = self.config
        return openai.OpenAI(
            api_key=c.api_key or "not-needed",
            base_url=c.base_url,
            timeout=c.timeout,
            max_retries=c.max_retries,
            http_client=openai.DefaultHttpxClient(verify=self._ssl),
        )

    def _pool(self) -> openai.OpenAI:
        """This thread's client (threads are spread evenly over the pools)."""
        client = getattr(self._local, "client", None)
        if client is None:
            with self._pool_lock:
                client = self._local.client = self._pools[self._next_pool % len(self._pools)]
                self._next_pool += 1
        return client

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
            p["logprobs"] = True
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
    ) -> Completion:
        """One chat completion (cached). ``validate(text)`` may raise: the reply is then not
        cached, so a malformed answer is asked for again next time; what it returns is kept in
        ``Completion.parsed`` (fresh answers only). ``cache_only``: never call
        the endpoint (answers bought through the Batch API are read back this way)."""
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
        try:
            result = self._call(messages, schema)
        except LLMError:
            self.usage.add(failures=1)
            raise
        self.usage.add(
            calls=1, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
        )
        if validate is not None:
            result.parsed = validate(result.text)
        if self.cache is not None:
            self.cache.put(key, result)
        return result

    @staticmethod
    def _post(client: openai.OpenAI, params: dict):
        """POST /chat/completions through the client's own machinery (auth, timeouts, retries,
        Retry-After) as ``chat.completions.with_raw_response.create`` does, minus its walk of the
        body against the typed-dict annotations: our body is plain JSON already, and that walk was
        the largest CPU cost per call (profiled with yappi at concurrency 64)."""
        return client.post(
            "/chat/completions",
            body=params,
            cast_to=ChatCompletion,
            options={"headers": {RAW_RESPONSE_HEADER: "true"}, "security": {"bearer_auth": True}},
        )

    def _send(self, params: dict, probing: bool):
        """POST the request; a probe (no retries) that meets a transient failure is sent again
        with the usual retries, so only a format refusal comes back from a probe at once."""
        try:
            return self._post(self._probe if probing else self._pool(), params)
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
        fmt = (params.get("response_format") or {}).get("type")
        probing = fmt == "json_schema" and not self._format_confirmed
        try:
            raw = self._send(params, probing)
        except openai.APITimeoutError as e:
            raise LLMError(
                f"timed out after {self.config.timeout:.0f}s ({self.config.max_retries} retries)",
                retryable=True,
            ) from e
        except openai.APIConnectionError as e:
            raise LLMError(f"cannot reach the LLM endpoint ({e})", retryable=True) from e
        except openai.APIStatusError as e:
            status = e.status_code
            text = str(e).lower()
            if status == 400 and self._logprobs and "logprob" in text:
                log.warning(
                    "endpoint rejects logprobs; confidence will come from demonstration similarity"
                )
                self._logprobs = False
                return self._call(messages, schema)
            if probing and status in _REFUSES_FORMAT:
                return self._fall_back("json_schema", "json_object", status, messages, schema)
            if fmt == "json_object" and status in (400, 422) and "response_format" in text:
                return self._fall_back("json_object", "none", status, messages, schema)
            retryable = status in (408, 409, 429) or status >= 500
            hint = {
                401: " (check OPENAI_API_KEY)",
                404: " (check ALLABEL_LLM_MODEL and OPENAI_BASE_URL)",
            }.get(status, "")
            raise LLMError(
                f"HTTP {status} from the LLM endpoint{hint}: {e.message}",
                retryable=retryable,
                status=status,
            ) from e
        if raw.retries_taken:
            self.usage.add(retries=raw.retries_taken)
        if probing:
            self._format_confirmed = True
        result = completion_from_json(raw.http_response.json())
        result.retries = raw.retries_taken
        return result

    def refused_format(self, status: int | None, message: str) -> bool:
        """A reply that came back some other way (a Batch API error line) refused our
        response_format: weaken it for the next requests. True if it did."""
        text = message.lower()
        if status not in (400, 422) or not ("response_format" in text or "json_schema" in text):
            return False
        weaker = {"json_schema": "json_object", "json_object": "none"}.get(self._format)
        if weaker is None:
            return False
        log.warning(
            "the endpoint refused response_format %s in a batch; using %s from now on",
            self._format,
            weaker,
        )
        self._format, self._format_confirmed = weaker, False
        return True

    def _fall_back(
        self, old: str, new: str, status: int, messages: list[dict], schema: dict | None
    ) -> Completion:
        """Retry with a weaker response_format; keep it only if the endpoint then answers at once
        (if it needed retries too, it was failing rather than refusing: probe again next call)."""
        previous = self._format
        self._format = new
        try:
            result = self._call(messages, schema)
        except LLMError:
            self._format = previous
            raise
        if result.retries:
            self._format = previous
            return result
        log.warning(
            "the endpoint refused response_format %s (HTTP %d); using %s from now on",
            old,
            status,
            self._format,
        )
        return result


def run_bounded(
    fn: Callable, items: Iterable, concurrency: int, on_done: Callable | None = None
) -> list:
    """``fn`` over ``items`` on at most ``concurrency`` threads; results in input order.

    An exception becomes that item's result, so one failure never stops the batch.
    """
    items = list(items)
    results: list = [None] * len(items)

    def one(i):
        try:
            results[i] = fn(items[i])
        except Exception as e:  # noqa: BLE001 - recorded per item, reported by the caller
            results[i] = e
        if on_done:
            on_done(i, results[i])

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(one, range(len(items))))
    return results
