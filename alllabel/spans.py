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


def _matches(text: str, needle: str) -> list[tuple[int, int, int]]:
    """(tier, start, end) for every match; tier 0 exact, 1 case/whitespace-tolerant; +2 if not whole-word."""
    found: dict[tuple[int, int], int] = {(p, p + len(needle)): 0 for p in exact_positions(text, needle)}
    words = needle.split()
    if words:
        # A lookahead finds overlapping matches too.
        pattern = re.compile("(?=(" + r"\s+".join(re.escape(w) for w in words) + "))", re.IGNORECASE)
        for m in pattern.finditer(text):
            found.setdefault((m.start(1), m.end(1)), 1)
    return sorted(
        ((tier + (0 if is_whole_word(text, s, e) else 2), s, e) for (s, e), tier in found.items()),
    )


def align_entities(text: str, entities: list[dict], labels: list[str] | set[str]) -> Alignment:
    """Place ``entities`` (dicts with ``label``, ``text``, optional ``occurrence``) in ``text``."""
    allowed = set(labels)
    out = Alignment()
    taken: dict[str, list[tuple[int, int]]] = {}
    cache: dict[str, list[tuple[int, int, int]]] = {}
    for ent in entities:
        label, value = ent.get("label"), ent.get("text")
        if label not in allowed:
            out.bad_label.append(ent)
            continue
        if not isinstance(value, str) or not value.strip():
            out.not_found.append(ent)
            continue
        if value not in cache:
            cache[value] = _matches(text, value)
        spans_of_label = taken.setdefault(label, [])
        free = [(t, s, e) for t, s, e in cache[value] if all(e <= a or s >= b for a, b in spans_of_label)]
        occurrence = ent.get("occurrence")
        choice = None
        if isinstance(occurrence, int) and not isinstance(occurrence, bool) and occurrence >= 1:
            exact = sorted((m for m in cache[value] if m[0] in (0, 2)), key=lambda m: m[1])
            if occurrence <= len(exact) and exact[occurrence - 1] in free:
                choice = exact[occurrence - 1]
        if choice is None and free:
            choice = free[0]
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
