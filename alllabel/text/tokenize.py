"""Tokenizer for BM25 on scientific text.

Rules, in order:
1. Unicode NFKC normalisation, so subscripts/superscripts and full-width forms become plain
   characters (``H₂O`` -> ``h2o``, ``Ｃｕ`` -> ``cu``), then case folding.
2. Decimal numbers stay whole (``0.37``, ``1,5`` is split): a unit amount is one token.
3. Runs of letters and digits are tokens (``cu(clo4)2·6h2o`` -> ``cu``, ``clo4``, ``2``, ``6h2o``).
   Punctuation, brackets, middle dots and slashes separate tokens and are dropped.
4. Ideographic scripts (CJK, kana, hangul) have no spaces, so each of their characters is a token.
"""

from __future__ import annotations

import re
import unicodedata

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
)
_TOKEN = re.compile(rf"[{_CJK}]|\d+\.\d+|[^\W_{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into BM25 tokens (see module docstring)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())
