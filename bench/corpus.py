"""Synthetic paragraph-length corpora built from real MOF synthesis sentences.

Texts are shuffled mixtures of sentences from examples/mof_zhang2024.jsonl (MIT (c) 2023
zw-SIMM), so vocabulary, lengths and term statistics are those of real chemistry paragraphs.
"""

import json
import re
from pathlib import Path

import numpy as np

MOF = Path(__file__).resolve().parents[1] / "examples" / "mof_zhang2024.jsonl"


def corpus(n: int, seed: int = 0) -> list[str]:
    paragraphs = [json.loads(line)["text"] for line in MOF.open(encoding="utf-8")]
    sentences = [s for p in paragraphs for s in re.split(r"(?<=[.;])\s+", p) if len(s) > 20]
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, size=n)
    return [
        " ".join(sentences[j] for j in rng.integers(0, len(sentences), size=m)) for m in lengths
    ]
