"""OpenAI-compatible chat client: retries, a persistent cache, usage and cost accounting.

Works with any server that speaks the OpenAI chat-completions API (OpenAI, Azure OpenAI's
v1 endpoint, DeepSeek, vLLM, Ollama, llama.cpp) through the official ``openai`` package.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import openai

log = logging.getLogger(__name__)

# US$ per million tokens (input, output); used for estimates only. Override with
# ALLABEL_PRICE_INPUT / ALLABEL_PRICE_OUTPUT for other models or new prices.
KNOWN_PRICES = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "deepseek-chat": (0.27, 1.10)}
RETRYABLE_STATUS = {408, 409, 429}


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


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
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    concurrency: int = 4
    json_mode: bool = True
    logprobs: bool = True
    price_input: float | None = None
    price_output: float | None = None

    @classmethod
    def from_env(cls, **overrides) -> "LLMConfig":
        """OPENAI_API_KEY, OPENAI_BASE_URL, ALLABEL_LLM_MODEL, ALLABEL_LLM_TEMPERATURE,
        ALLABEL_LLM_MAX_TOKENS, ALLABEL_LLM_TIMEOUT, ALLABEL_LLM_MAX_RETRIES,
        ALLABEL_LLM_CONCURRENCY, ALLABEL_LLM_JSON_MODE, ALLABEL_LLM_LOGPROBS,
        ALLABEL_PRICE_INPUT, ALLABEL_PRICE_OUTPUT. Keyword overrides win over the environment."""
        env = os.environ
        cfg = cls(
            api_key=env.get("OPENAI_API_KEY") or None,
            base_url=env.get("OPENAI_BASE_URL") or None,
            model=env.get("ALLABEL_LLM_MODEL", "gpt-4o"),
            temperature=float(env.get("ALLABEL_LLM_TEMPERATURE", 0)),
            max_tokens=int(env.get("ALLABEL_LLM_MAX_TOKENS", 2048)),
            timeout=float(env.get("ALLABEL_LLM_TIMEOUT", 60)),
            max_retries=int(env.get("ALLABEL_LLM_MAX_RETRIES", 5)),
            concurrency=int(env.get("ALLABEL_LLM_CONCURRENCY", 4)),
            json_mode=_env_bool("ALLABEL_LLM_JSON_MODE", True),
            logprobs=_env_bool("ALLABEL_LLM_LOGPROBS", True),
            price_input=float(env["ALLABEL_PRICE_INPUT"]) if env.get("ALLABEL_PRICE_INPUT") else None,
            price_output=float(env["ALLABEL_PRICE_OUTPUT"]) if env.get("ALLABEL_PRICE_OUTPUT") else None,
        )
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"unknown LLM setting {key!r}")
            if value is not None:
                setattr(cfg, key, value)
        if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.timeout <= 0:
            raise ValueError("LLM concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        return cfg

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


class LLMError(RuntimeError):
    """A call failed for good (after retries, or at once for errors a retry cannot fix)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.wait: float | None = None  # the server's Retry-After, when it sent one


def token_cost(prompt_tokens: int, completion_tokens: int, prices: tuple[float, float] | None) -> float | None:
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        return token_cost(self.prompt_tokens, self.completion_tokens, prices)

    def as_dict(self, prices=None) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["cost_usd"] = self.cost(prices)
        return d


class LLMCache:
    """SQLite cache of successful completions, keyed on model, messages and parameters."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
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
        value = json.dumps({"text": c.text, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "logprobs": c.logprobs})
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?, ?)", (key, value, time.time()))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _retry_after(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


class LLMClient:
    def __init__(self, config: LLMConfig, cache: LLMCache | None = None, *, sleep: Callable[[float], None] = time.sleep):
        if not config.configured:
            raise ValueError("no LLM configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for other endpoints)")
        self.config = config
        self.cache = cache
        self.usage = Usage()
        self._sleep = sleep
        # We retry ourselves (to count retries and honour Retry-After uniformly).
        self._client = openai.OpenAI(
            api_key=config.api_key or "not-needed", base_url=config.base_url, timeout=config.timeout, max_retries=0
        )
        self._logprobs = config.logprobs

    def _params(self, messages: list[dict]) -> dict:
        p = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        if self.config.json_mode:
            p["response_format"] = {"type": "json_object"}
        if self._logprobs:
            p["logprobs"] = True
        return p

    def cache_key(self, messages: list[dict]) -> str:
        p = self._params(messages)
        p.pop("logprobs", None)  # the same answer, with or without confidence data
        return hashlib.sha256(json.dumps(p, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def complete(self, messages: list[dict], validate: Callable[[str], object] | None = None) -> Completion:
        """One chat completion (cached). ``validate(text)`` may raise: the reply is then not
        cached, so a malformed answer is asked for again next time."""
        key = self.cache_key(messages)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.add(cache_hits=1)
                return hit
        attempt = 0
        while True:
            try:
                result = self._call(messages)
                break
            except LLMError as e:
                if not e.retryable or attempt >= self.config.max_retries:
                    self.usage.add(failures=1)
                    raise
                delay = e.wait
                if delay is None:
                    delay = random.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2**attempt))
                attempt += 1
                self.usage.add(retries=1)
                log.warning("LLM call failed (%s); retry %d/%d in %.1fs", e, attempt, self.config.max_retries, delay)
                self._sleep(min(delay, 120.0))
        self.usage.add(calls=1, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        if validate is not None:
            validate(result.text)
        if self.cache is not None:
            self.cache.put(key, result)
        return result

    def _call(self, messages: list[dict]) -> Completion:
        try:
            r = self._client.chat.completions.create(**self._params(messages))
        except openai.APITimeoutError as e:
            raise LLMError(f"timed out after {self.config.timeout:.0f}s", retryable=True) from e
        except openai.APIConnectionError as e:
            raise LLMError(f"cannot reach the LLM endpoint ({e})", retryable=True) from e
        except openai.APIStatusError as e:
            status = e.status_code
            if status == 400 and self._logprobs and "logprob" in str(e).lower():
                log.warning("endpoint rejects logprobs; confidence will come from demonstration similarity")
                self._logprobs = False
                return self._call(messages)
            retryable = status in RETRYABLE_STATUS or status >= 500
            hint = {401: " (check OPENAI_API_KEY)", 404: " (check ALLABEL_LLM_MODEL and OPENAI_BASE_URL)"}.get(status, "")
            err = LLMError(f"HTTP {status} from the LLM endpoint{hint}: {e.message}", retryable=retryable, status=status)
            err.wait = _retry_after(e)
            raise err from e
        if not r.choices:
            raise LLMError("the LLM returned no choices", retryable=True)
        choice = r.choices[0]
        text = choice.message.content or ""
        logprobs = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            logprobs = [(t.token, float(t.logprob)) for t in content]
        usage = r.usage
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            logprobs=logprobs,
        )


def run_bounded(fn: Callable, items: Iterable, concurrency: int, on_done: Callable | None = None) -> list:
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


def estimate_tokens(text: str) -> int:
    """Rough token count (about 4 characters a token for English/chemistry text with GPT tokenizers)."""
    return max(1, round(len(text) / 4))
