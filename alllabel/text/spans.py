"""Placing entity strings (as an LLM writes them) at character offsets in the task text.

Offsets are Python ``str`` indices (code points), end exclusive, as in Label Studio's text
``start``/``end``. For each entity, in the order given:

1. Its label must be in the label set, else it is dropped (``bad_label``).
2. Candidate places, best first: whole-word exact matches; whole-word matches that ignore case
   and treat any run of whitespace (spaces, tabs, CR/LF) as equal; then the same two inside a
   longer word (``H2O`` in ``6H2O``); within a tier, text order.
3. A place already taken by the same label, or overlapping a span of the same label, is skipped,
   so an entity listed twice labels the first and second mention ("repeated mentions in text
   order"). An ``occurrence`` hint n (1-based) asks for the n-th exact occurrence of the string
   in the text (counting occurrences inside longer words, as ``occurrence_of`` does).
4. Nothing left: dropped (``not_found``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str
    text: str
    score: float | None = None

    def to_dict(self) -> dict:
        d = {"start": self.start, "end": self.end, "label": self.label, "text": self.text}
        if self.score is not None:
            d["score"] = self.score
        return d


@dataclass
class Alignment:
    spans: list[Span] = field(default_factory=list)
    not_found: list[dict] = field(default_factory=list)
    bad_label: list[dict] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return len(self.not_found) + len(self.bad_label)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def is_whole_word(text: str, start: int, end: int) -> bool:
    left_ok = start == 0 or not (_is_word(text[start - 1]) and _is_word(text[start]))
    right_ok = end == len(text) or not (_is_word(text[end - 1]) and _is_word(text[end]))
    return left_ok and right_ok


def exact_positions(text: str, needle: str) -> list[int]:
    """Start of every exact occurrence of ``needle``, overlapping ones included, in text order.

    The one definition of "the n-th occurrence" for hints, alignment and projection."""
    out = []
    pos = text.find(needle) if needle else -1
    while pos != -1:
        out.append(pos)
        pos = text.find(needle, pos + 1)
    return out


@lru_cache(maxsize=8192)
def _tolerant(needle: str) -> re.Pattern | None:
    """Case- and whitespace-tolerant pattern of ``needle`` (a lookahead also finds overlapping
    matches). Cached: re's own cache holds 512 patterns, fewer than a run's distinct strings."""
    words = needle.split()
    return (
        re.compile("(?=(" + r"\s+".join(re.escape(w) for w in words) + "))", re.IGNORECASE)
        if words
        else None
    )


def _exact_matches(text: str, needle: str) -> list[tuple[int, int, int]]:
    """(tier, start, end) of every exact match in text order; tier 0 whole-word, 2 inside a word."""
    n = len(needle)
    return [
        (0 if is_whole_word(text, p, p + n) else 2, p, p + n) for p in exact_positions(text, needle)
    ]


def _matches(
    text: str, needle: str, exact: list[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """Every match, best first: ``exact`` ones plus case/whitespace-tolerant ones (tier 1, 3 inside a word)."""
    found: dict[tuple[int, int], int] = {(s, e): t for t, s, e in exact}
    pattern = _tolerant(needle)
    if pattern is not None:
        for m in pattern.finditer(text):
            s, e = m.start(1), m.end(1)
            if (s, e) not in found:
                found[(s, e)] = 1 if is_whole_word(text, s, e) else 3
    return sorted((t, s, e) for (s, e), t in found.items())


def align_entities(text: str, entities: list[dict], labels: list[str] | set[str]) -> Alignment:
    """Place ``entities`` (dicts with ``label``, ``text``, optional ``occurrence``) in ``text``."""
    allowed = set(labels)
    out = Alignment()
    taken: dict[str, list[tuple[int, int]]] = {}
    exact_of: dict[str, list[tuple[int, int, int]]] = {}
    all_of: dict[str, list[tuple[int, int, int]]] = {}
    for ent in entities:
        label, value = ent.get("label"), ent.get("text")
        if label not in allowed:
            out.bad_label.append(ent)
            continue
        if not isinstance(value, str) or not value.strip():
            out.not_found.append(ent)
            continue
        if value not in exact_of:
            exact_of[value] = _exact_matches(text, value)
        exact = exact_of[value]
        spans_of_label = taken.setdefault(label, [])

        def free(m, spans=spans_of_label):
            return all(m[2] <= a or m[1] >= b for a, b in spans)

        occurrence = ent.get("occurrence")
        choice = None
        if isinstance(occurrence, int) and not isinstance(occurrence, bool) and occurrence >= 1:
            if occurrence <= len(exact) and free(exact[occurrence - 1]):
                choice = exact[occurrence - 1]
        if (
            choice is None
        ):  # the best tier, then text order; tolerant matches only looked for when needed
            choice = next((m for m in exact if m[0] == 0 and free(m)), None)
        if choice is None:
            if value not in all_of:
                all_of[value] = _matches(text, value, exact)
            choice = next((m for m in all_of[value] if free(m)), None)
        if choice is None:
            out.not_found.append(ent)
            continue
        _, s, e = choice
        spans_of_label.append((s, e))
        out.spans.append(Span(s, e, label, text[s:e]))
    out.spans.sort(key=lambda sp: (sp.start, sp.end, sp.label))
    return out


def occurrence_of(text: str, start: int, end: int) -> int | None:
    """1-based index of this mention among exact occurrences of its string, if it is not unique."""
    positions = exact_positions(text, text[start:end])
    return positions.index(start) + 1 if len(positions) > 1 and start in positions else None
