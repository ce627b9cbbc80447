"""Sentence and paragraph pieces of a text: windows for long tasks, excerpts of long demonstrations.

Pure functions over Python ``str`` offsets (code points, end exclusive, as everywhere here).

* ``pieces(text)``: consecutive ``(start, end)`` ranges covering the whole text, each a sentence or
  a line (with its trailing whitespace). A boundary is a line break (LF, CRLF or CR), or ``.``/``!``/
  ``?`` (plus closing quotes/brackets) followed by whitespace and an upper-case letter, a digit or an
  opening quote - unless the word before the stop is a known abbreviation (``e.g.``, ``Fig.``,
  ``ca.``, ``et al.``, ...) or a single capital (an initial), the stop sits between digits
  (``0. 10 mmol``), or inside an open bracket (``[C10H7CoN5O2. DMF]``). Formulas and decimals
  have no whitespace after their dots, so they never split. None of the 7,277 gold entities of the
  658 MOF paragraphs crosses a boundary.
* ``windows(text, max_tokens, count)``: consecutive pieces packed greedily into ranges of at most
  ``max_tokens`` (by ``count``); a range ends at a paragraph break when one falls in its second half.
  A single piece longer than that is cut at whitespace, and only text with no whitespace at all is
  cut mid-word. Window edges are stripped of whitespace; between windows only whitespace is left out.
* ``entity_units`` / ``excerpt``: the sentences that hold a demonstration's entities (pieces merged
  where an entity crosses a boundary), and the shortened demonstration made of some of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

ABBREVIATIONS = frozenset(
    "e.g i.e ca approx fig figs eq eqs ref refs no nos vs cf resp wt vol al etc dr mr mrs ms st prof "
    "min max temp conc calcd anal found exp sect tab ed eds mol aq sat soln ppt".split()
)
_STOP = re.compile(r"[.!?][\"'”’)\]]*(\s+)")
_LINEBREAK = re.compile(r"[ \t]*(?:\r\n|\r|\n)\s*")
_OPENERS = "\"'“‘"


def _is_abbreviation(text: str, stop: int) -> bool:
    """The word ending at ``text[stop]`` (a '.') is an abbreviation or an initial."""
    start = stop
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
    word = text[start:stop]
    if len(word) == 1 and word.isupper():
        return True  # "J. Smith"
    return word.lower() in ABBREVIATIONS or (
        word.lower() == "al" and text[max(0, start - 3) : start].lower() == "et "
    )


def pieces(text: str) -> list[tuple[int, int]]:
    """Sentences and lines covering ``text`` exactly, in order."""
    breaks = [m.end() for m in _LINEBREAK.finditer(text)]
    cuts, b, last = list(breaks), 0, 0
    for m in _STOP.finditer(text):
        stop, after = m.start(), m.end()
        while b < len(breaks) and breaks[b] <= stop:
            last = max(last, breaks[b])
            b += 1
        if after >= len(text):
            continue
        nxt = text[after]
        if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        if text[stop] == "." and (
            _is_abbreviation(text, stop)
            or (stop > 0 and text[stop - 1].isdigit() and nxt.isdigit())
        ):
            continue  # "e.g. X", "J. Smith", "0. 10 mmol"
        inside = text[last:stop]
        if inside.count("(") + inside.count("[") > inside.count(")") + inside.count("]"):
            continue  # "[C10H7CoN5O2. DMF]"
        cuts.append(after)
        last = after
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [(a, b) for a, b in zip(bounds, bounds[1:])]


def _paragraph_end(text: str, end: int) -> bool:
    """The piece ending at ``end`` ends with a blank line (a paragraph break)."""
    tail = text[max(0, end - 8) : end]
    return tail.count("\n") >= 2 or tail.count("\r") >= 2


def _split_long(
    text: str, start: int, end: int, max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, int]]:
    """Cut one over-long piece at whitespace (mid-word only when there is none) into ranges that fit."""
    out = []
    while start < end:
        n = count(text[start:end])
        if n <= max_tokens:
            out.append((start, end))
            break
        guess = start + max(1, int((end - start) * max_tokens / n * 0.9))
        space = max(
            text.rfind(" ", start + 1, guess + 1),
            text.rfind("\t", start + 1, guess + 1),
            text.rfind("\n", start + 1, guess + 1),
        )
        cut = space + 1 if space > start else guess
        while cut > start + 1 and count(text[start:cut]) > max_tokens:
            cut = start + (cut - start) // 2
        out.append((start, cut))
        start = cut
    return out


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def windows(
    text: str,
    max_tokens: int,
    count: Callable[[str], int],
    count_many: Callable[[list[str]], list[int]] | None = None,
) -> list[tuple[int, int]]:
    """Ranges of ``text`` of at most ``max_tokens`` each (see the module doc), in order."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    spans = pieces(text)
    sizes = (
        count_many([text[a:b] for a, b in spans])
        if count_many
        else [count(text[a:b]) for a, b in spans]
    )
    units: list[tuple[int, int, int]] = []  # (start, end, tokens), none above max_tokens
    for (a, b), n in zip(spans, sizes):
        if n <= max_tokens:
            units.append((a, b, n))
        else:
            units.extend(
                (x, y, count(text[x:y])) for x, y in _split_long(text, a, b, max_tokens, count)
            )
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        total, j, last_para = 0, i, None
        while j < len(units) and total + units[j][2] <= max_tokens:
            total += units[j][2]
            if _paragraph_end(text, units[j][1]) and total * 2 >= max_tokens:
                last_para = j
            j += 1
        j = max(j, i + 1)
        if j < len(units) and last_para is not None:
            j = last_para + 1
        a, b = _strip(text, units[i][0], units[j - 1][1])
        if b > a:
            out.append((a, b))
        i = j
    return out


def entity_units(text: str, spans: Sequence[dict]) -> list[tuple[int, int]]:
    """Sentence ranges holding at least one span (merged where a span crosses pieces), in order."""
    ranges = []
    segs = pieces(text)
    for s in sorted(spans, key=lambda s: (s["start"], s["end"])):
        covering = [(a, b) for a, b in segs if a < s["end"] and s["start"] < b] or [
            (s["start"], s["end"])
        ]
        ranges.append((covering[0][0], covering[-1][1]))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return [_strip(text, a, b) for a, b in merged]


def excerpt(
    text: str, spans: Sequence[dict], units: Sequence[tuple[int, int]], sep: str = "\n"
) -> tuple[str, list[dict]]:
    """The text of ``units`` joined by ``sep``, and the spans inside them at their new offsets."""
    parts, out, pos = [], [], 0
    for a, b in units:
        if parts:
            pos += len(sep)
        parts.append(text[a:b])
        out.extend(
            {**s, "start": s["start"] - a + pos, "end": s["end"] - a + pos}
            for s in spans
            if a <= s["start"] and s["end"] <= b
        )
        pos += b - a
    return sep.join(parts), out
