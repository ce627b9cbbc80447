"""Which tasks may be offered to humans: the exclusions that ``select(exclude=...)`` honours.

Two rules, both on by default in the CLI and meant to be in the backend (``paper_exact`` turns
both off and gives the paper's selection):

* **Near-duplicates** (``duplicates.py``): of each cluster only its representative may be
  offered; a cluster that holds an annotated or queued task is represented by it, so its other
  members are never offered. They still get pre-annotations - projected from the human
  annotation of a near-duplicate (``projection.py``) when there is one.
* **Length outliers**: a task whose BM25 token count is more than ``long_factor`` (4) times the
  corpus's 95th percentile, or less than its 5th percentile divided by ``short_factor`` (4), or
  below ``min_tokens`` (3), is not offered (the core-set would pick it first: it is the least
  similar to everything). The percentile rule needs ``min_corpus`` (20) tasks. MOF paragraphs
  have 38-505 tokens (5th/95th percentiles 69/252): none is an outlier; a 200,000-character
  paragraph (about 30,000 tokens) is. Outliers still get pre-annotations.
Already-chosen tasks (annotated, queued) are never excluded: they stay demonstrations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from alllabel.selection.duplicates import DEFAULT_THRESHOLD, Duplicates, find_duplicates
from alllabel.text.tokenize import tokenize


@dataclass(frozen=True)
class LengthRule:
    long_factor: float = 4.0
    short_factor: float = 4.0
    quantiles: tuple[float, float] = (0.05, 0.95)
    min_tokens: int = 3
    min_corpus: int = 20

    def bounds(self, lengths: np.ndarray) -> tuple[float, float]:
        """(lowest, highest) token count offered to humans."""
        low, high = float(self.min_tokens), float("inf")
        if len(lengths) >= self.min_corpus:
            q_lo, q_hi = np.quantile(lengths, self.quantiles)
            low = max(low, q_lo / self.short_factor)
            high = q_hi * self.long_factor
        return low, high


DEFAULT_LENGTH_RULE = LengthRule()


def length_outliers(
    texts: Sequence[str], rule: LengthRule = DEFAULT_LENGTH_RULE
) -> tuple[np.ndarray, dict[int, str]]:
    """Mask of tasks outside the rule's length range, with the reason for each."""
    lengths = np.array([len(tokenize(t)) for t in texts], dtype=np.float64)
    low, high = rule.bounds(lengths)
    mask = (lengths < low) | (lengths > high)
    reasons = {
        int(i): (
            f"too long: {int(lengths[i]):,} tokens (limit {high:,.0f})"
            if lengths[i] > high
            else f"too short: {int(lengths[i]):,} tokens (minimum {low:,.0f})"
        )
        for i in np.flatnonzero(mask)
    }
    return mask, reasons


@dataclass
class Screening:
    """The result of ``screen``: ``excluded`` is what ``select(exclude=...)`` takes."""

    excluded: np.ndarray  # bool (n,)
    reasons: dict[int, str] = field(default_factory=dict)
    duplicates: Duplicates | None = None
    outliers: np.ndarray | None = None  # bool (n,)

    def summary(self) -> dict[str, int]:
        dup = (
            0
            if self.duplicates is None
            else int(
                (
                    self.excluded
                    & (self.duplicates.representative != np.arange(len(self.excluded)))
                ).sum()
            )
        )
        out = 0 if self.outliers is None else int((self.excluded & self.outliers).sum())
        return {
            "excluded": int(self.excluded.sum()),
            "near_duplicates": dup,
            "length_outliers": out,
        }


def screen(
    texts: Sequence[str],
    *,
    chosen: Iterable[int] = (),
    duplicates: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    outliers: bool = True,
    length_rule: LengthRule = DEFAULT_LENGTH_RULE,
    found: Duplicates | None = None,
) -> Screening:
    """Tasks not to offer to humans. ``chosen``: annotated or queued tasks (never excluded; they
    represent their duplicate clusters). ``found`` reuses an earlier ``find_duplicates`` result
    for the same texts (it must have been computed with ``chosen`` first in its priority)."""
    n = len(texts)
    chosen = list(dict.fromkeys(int(i) for i in chosen))
    excluded = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    dups = None
    if duplicates:
        dups = (
            found
            if found is not None
            else find_duplicates(texts, threshold=threshold, priority=chosen)
        )
        for i in dups.followers:
            rep = int(dups.representative[i])
            excluded[i] = True
            jac = next((v for v, j in dups.neighbours(int(i)) if j == rep), 1.0)
            reasons[int(i)] = f"near-duplicate of task #{rep} (Jaccard {jac:.3f})"
    mask = None
    if outliers:
        mask, why = length_outliers(texts, length_rule)
        excluded |= mask
        for i, r in why.items():
            reasons.setdefault(i, r)
    excluded[chosen] = False
    for i in chosen:
        reasons.pop(i, None)
    return Screening(excluded, reasons, dups, mask)
