"""How the LLM is called: ``LLMConfig``, read strictly from the environment (``alllabel.env``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

import alllabel.env as env

# US$ per million tokens (input, output); used for estimates only. Override with
# ALLABEL_PRICE_INPUT / ALLABEL_PRICE_OUTPUT for other models or new prices.
KNOWN_PRICES = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "deepseek-chat": (0.27, 1.10)}
# Context windows (prompt + reply tokens) of models we know; others are the user's responsibility.
KNOWN_CONTEXT = {"gpt-4o": 128_000, "gpt-4o-mini": 128_000, "deepseek-chat": 64_000}
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
# Seconds per call when ALLABEL_LLM_TIMEOUT is unset: a server on this machine or the local
# network is often a CPU that takes minutes for a long reply; a cloud endpoint answers in seconds.
DEFAULT_TIMEOUT, LOCAL_TIMEOUT = 60.0, 600.0


def is_local(base_url: str | None) -> bool:
    """The endpoint is on this machine or a private network (a local server, not a cloud)."""
    host = urlsplit(base_url or "").hostname or ""
    if host == "localhost" or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def token_cost(
    prompt_tokens: int, completion_tokens: int, prices: tuple[float, float] | None
) -> float | None:
    """US$ for a token count at (input, output) prices per million tokens; None if unknown."""
    if prices is None:
        return None
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


@dataclass
class LLMConfig:
    """Everything that decides how the LLM is called. ``from_env`` documents the variables."""

    api_key: str | None = None
    base_url: str | None = None
    model: str = "gpt-4o"
    temperature: float = 0.0
    max_tokens: int = 2048
    timeout: float | None = None  # None: DEFAULT_TIMEOUT, LOCAL_TIMEOUT for a local endpoint
    max_retries: int = 5
    concurrency: int = 4
    response_format: str = "json_schema"
    logprobs: bool = True
    # Read replies as they come, so a looping one is cut early. None: on for a local endpoint
    # (small local models loop; a cut saves minutes), off for a cloud one (where a loop is rare,
    # bounded by max_tokens and billed, and reading every piece costs client CPU: at concurrency
    # 64 the bulk run fell from ~90 % to 55-68 % of its bound with streaming on, bench/prelabel.py).
    stream: bool | None = None
    price_input: float | None = None
    price_output: float | None = None
    max_prompt_tokens: int = 8000
    context: int | None = None  # the model's context window, when neither known nor reported
    token_margin: float | None = None
    batch: bool = False
    batch_poll: float = 30.0
    batch_price_factor: float = 0.5

    @classmethod
    def from_env(cls, **overrides) -> "LLMConfig":
        """OPENAI_API_KEY, OPENAI_BASE_URL, ALLABEL_LLM_MODEL, ALLABEL_LLM_TEMPERATURE,
        ALLABEL_LLM_MAX_TOKENS, ALLABEL_LLM_TIMEOUT, ALLABEL_LLM_MAX_RETRIES,
        ALLABEL_LLM_CONCURRENCY, ALLABEL_LLM_RESPONSE_FORMAT (ALLABEL_LLM_JSON_MODE=0 means
        "none"), ALLABEL_LLM_LOGPROBS, ALLABEL_LLM_STREAM, ALLABEL_PRICE_INPUT, ALLABEL_PRICE_OUTPUT,
        ALLABEL_MAX_PROMPT_TOKENS, ALLABEL_LLM_CONTEXT, ALLABEL_TOKEN_MARGIN, ALLABEL_LLM_BATCH,
        ALLABEL_LLM_BATCH_POLL. Keyword overrides win over the environment. A value that does
        not parse (``ALLABEL_LLM_BATCH=ture``) raises ``env.SettingError`` naming the variable."""
        default_fmt = "json_schema" if env.flag("ALLABEL_LLM_JSON_MODE", True) else "none"
        cfg = cls(
            api_key=env.text("OPENAI_API_KEY"),
            base_url=env.text("OPENAI_BASE_URL"),
            model=env.text("ALLABEL_LLM_MODEL", "gpt-4o"),
            temperature=env.number("ALLABEL_LLM_TEMPERATURE", 0.0, minimum=0),
            max_tokens=env.number("ALLABEL_LLM_MAX_TOKENS", 2048, integer=True, minimum=1),
            timeout=env.number("ALLABEL_LLM_TIMEOUT", None, above=0, unit=" s"),
            max_retries=env.number("ALLABEL_LLM_MAX_RETRIES", 5, integer=True, minimum=0),
            concurrency=env.number("ALLABEL_LLM_CONCURRENCY", 4, integer=True, minimum=1),
            response_format=env.choice(
                "ALLABEL_LLM_RESPONSE_FORMAT", RESPONSE_FORMATS, default_fmt
            ),
            logprobs=env.flag("ALLABEL_LLM_LOGPROBS", True),
            # Unset: None, decided by the endpoint in ``check``; 0/1 force it either way.
            stream=(
                None
                if env.text("ALLABEL_LLM_STREAM") is None
                else env.flag("ALLABEL_LLM_STREAM", False)
            ),
            price_input=env.number("ALLABEL_PRICE_INPUT", None, minimum=0),
            price_output=env.number("ALLABEL_PRICE_OUTPUT", None, minimum=0),
            max_prompt_tokens=env.number(
                "ALLABEL_MAX_PROMPT_TOKENS", 8000, integer=True, minimum=1
            ),
            context=env.number("ALLABEL_LLM_CONTEXT", None, integer=True, minimum=1),
            token_margin=env.number("ALLABEL_TOKEN_MARGIN", None, above=0),
            batch=env.flag("ALLABEL_LLM_BATCH", False),
            batch_poll=env.number("ALLABEL_LLM_BATCH_POLL", 30.0, above=0, unit=" s"),
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
        if self.timeout is None:
            self.timeout = LOCAL_TIMEOUT if is_local(self.base_url) else DEFAULT_TIMEOUT
        if self.stream is None:
            self.stream = is_local(self.base_url)
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ValueError("LLM concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(
                f"ALLABEL_LLM_RESPONSE_FORMAT must be one of {', '.join(RESPONSE_FORMATS)}, "
                f"got {self.response_format!r}"
            )
        context = self.context or KNOWN_CONTEXT.get(self.model)
        if context:
            self.fit_context(context, "ALLABEL_LLM_CONTEXT" if self.context else "known")

    def fit_context(self, context: int, source: str) -> None:
        """Shrink the prompt and reply budgets so both fit ``context`` tokens (the reply keeps at
        most a quarter); refuse when not even a small prompt fits."""
        if self.max_prompt_tokens + self.max_tokens <= context:
            return
        reply = min(self.max_tokens, max(256, context // 4))
        prompt = min(self.max_prompt_tokens, context - reply)
        if prompt < 512:
            raise ValueError(
                f"{self.model} holds {context} tokens ({source}): too few for a prompt with "
                f"demonstrations and a {reply}-token reply; use a model with a larger context"
            )
        self.max_tokens, self.max_prompt_tokens = reply, prompt

    @property
    def configured(self) -> bool:
        """An LLM is usable: a key, or a base URL (local servers often need no key)."""
        return bool(self.api_key or self.base_url)

    def prices(self) -> tuple[float, float] | None:
        if self.price_input is not None and self.price_output is not None:
            return self.price_input, self.price_output
        return KNOWN_PRICES.get(self.model)

    def worst_case_usd(self, prompt_tokens: int, *, batch: bool = False) -> float | None:
        """At most what one call of ``prompt_tokens`` can be billed: a full ``max_tokens`` reply."""
        c = token_cost(prompt_tokens, self.max_tokens, self.prices())
        return None if c is None else c * (self.batch_price_factor if batch else 1.0)
