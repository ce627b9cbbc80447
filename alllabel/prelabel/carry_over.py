"""Carrying a human annotation over to a near-duplicate task, with exact offsets, no LLM.

Offsets are Python ``str`` indices (code points), end exclusive, as everywhere in alllabel.

Alignment: the two texts are compared with difflib on tokens (word runs, whitespace runs, single
other characters), and each replaced stretch is compared again character by character. This
gives character-exact opcodes at token-level cost, so a 200,000-character text aligns quickly.

Rule for each source span [s, e) (label kept):

1. **Unchanged or edited inside.** If every change that touches the span lies inside it (a change
   that only borders the span - an insertion right before or after it - does not count) and at
   least half of its characters are unchanged, the span maps to [s', e'): s' is where s lands in
   the target, e' where e lands. The text may differ inside (``Y(NO3)3·6H2O`` ->
   ``Tb(NO3)3·5H2O``, ``120 °C`` -> ``150 °C``): same template, same role; a span replaced as a
   whole (``DMF`` -> ``water``) is not carried over this way. It is kept if it is not empty and
   does not cut a word the source span did not cut.
2. **Otherwise re-found.** A change straddles a span boundary (``ethanol`` -> ``methanol``): the
   span's exact text is looked for in the target (whole word if the source span was one) near
   where the span would land (within its own length plus the size of the changes touching it),
   nearest first. Spans placed by rule 1 go first, so a re-found span never takes their place.
3. **Otherwise dropped** (reported in ``Projection.dropped``).
Projected spans never overlap another projected span of the same label (the later one is dropped).
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alllabel.text.spans import Span, exact_positions, is_whole_word

if TYPE_CHECKING:
    from alllabel.selection.duplicates import Duplicates

_TOKEN = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)
_REFINE_MAX = 4000  # characters; longer replaced stretches stay one opcode


def _tokens(text: str) -> tuple[list[str], list[int]]:
    toks, starts = [], []
    for m in _TOKEN.finditer(text):
        toks.append(m.group())
        starts.append(m.start())
    starts.append(len(text))
    return toks, starts


def align(a: str, b: str) -> list[tuple[str, int, int, int, int]]:
    """difflib-style opcodes (tag, i1, i2, j1, j2) in characters, turning ``a`` into ``b``."""
    ta, sa = _tokens(a)
    tb, sb = _tokens(b)
    out: list[tuple[str, int, int, int, int]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        ci1, ci2, cj1, cj2 = sa[i1], sa[i2], sb[j1], sb[j2]
        if tag == "replace" and ci2 - ci1 + cj2 - cj1 <= _REFINE_MAX:
            for t, x1, x2, y1, y2 in difflib.SequenceMatcher(
                None, a[ci1:ci2], b[cj1:cj2], autojunk=False
            ).get_opcodes():
                out.append((t, ci1 + x1, ci1 + x2, cj1 + y1, cj1 + y2))
        else:
            out.append((tag, ci1, ci2, cj1, cj2))
    # Merge neighbours with the same tag (refinement splits them).
    merged: list[list] = []
    for op in out:
        if merged and merged[-1][0] == op[0]:
            merged[-1][2], merged[-1][4] = op[2], op[4]
        else:
            merged.append(list(op))
    return [tuple(m) for m in merged]  # type: ignore[misc]


@dataclass
class Projection:
    spans: list[Span] = field(default_factory=list)
    edited: int = 0  # spans whose text differs from the source's (rule 1)
    refound: int = 0  # spans placed by rule 2
    dropped: list[dict] = field(default_factory=list)


def _land(ops: list, starts_a: list[int], pos: int, side: str) -> int:
    """Where source position ``pos`` lands in the target (``side``: as a start or an end)."""
    k = bisect.bisect_right(starts_a, pos) - 1
    tag, i1, i2, j1, j2 = ops[max(k, 0)]
    if tag == "equal" and i1 <= pos <= i2:
        return j1 + (pos - i1)
    if side == "end" and k > 0 and pos == i1:  # the end of the previous block
        return ops[k - 1][4]
    return j1 if pos <= i1 else j2


def _refind(sp: dict, whole: bool, touching: list, source: str, target: str, land, place) -> bool:
    """Rule 2: the span's string, found again near where it would land; True if placed."""
    s, e = sp["start"], sp["end"]
    value = source[s:e]
    # Only near where the span would land: the changes around it plus its own length.
    slack = len(value) + sum(max(c[2] - c[1], c[4] - c[3]) for c in touching)
    lo, hi = land(s, "start") - slack, land(e, "end") + slack
    want = land(s, "start")
    cands = [
        p
        for p in exact_positions(target, value)
        if lo <= p
        and p + len(value) <= hi
        and (not whole or is_whole_word(target, p, p + len(value)))
    ]
    return any(
        place(sp, (p, p + len(value)), "refound")
        for p in sorted(cands, key=lambda p: (abs(p - want), p))
    )


def project_spans(source: str, spans: Sequence[dict], target: str) -> Projection:
    """Spans ({start, end, label}) of ``source`` placed on ``target`` by the module's rule."""
    ops = align(source, target)
    starts_a = [op[1] for op in ops]
    changes = [op for op in ops if op[0] != "equal"]

    def land(pos: int, side: str) -> int:
        return _land(ops, starts_a, pos, side)

    out = Projection()
    placed: dict[str, list[tuple[int, int]]] = {}
    exact, refind = [], []
    for sp in sorted(spans, key=lambda x: (x["start"], x["end"], x["label"])):
        s, e = sp["start"], sp["end"]
        if not 0 <= s < e <= len(source):
            out.dropped.append(dict(sp))
            continue
        whole = is_whole_word(source, s, e)
        # Changes touching the span: overlapping it, or an insertion strictly inside it.
        touching = [
            c for c in changes if (c[1] < e and c[2] > s) or (c[1] == c[2] and s < c[1] < e)
        ]
        kept = (e - s) - sum(min(e, c[2]) - max(s, c[1]) for c in touching)  # unchanged characters
        if all(s <= c[1] and c[2] <= e for c in touching) and 2 * kept >= e - s:
            ns, ne = land(s, "start"), land(e, "end")
            trimmed = target[ns:ne].strip() == target[ns:ne] or source[s:e].strip() != source[s:e]
            if ns < ne and trimmed and (not whole or is_whole_word(target, ns, ne)):
                exact.append((sp, (ns, ne), "same" if target[ns:ne] == source[s:e] else "edited"))
                continue
        refind.append((sp, whole, touching))

    def place(sp, choice, kind) -> bool:
        label = sp["label"]
        if any(choice[0] < b and a < choice[1] for a, b in placed.get(label, [])):
            return False
        placed.setdefault(label, []).append(choice)
        out.spans.append(Span(choice[0], choice[1], label, target[choice[0] : choice[1]]))
        out.edited += kind == "edited"
        out.refound += kind == "refound"
        return True

    for sp, choice, kind in exact:  # rule 1 first: re-found spans never take their places
        if not place(sp, choice, kind):
            out.dropped.append(dict(sp))
    for sp, whole, touching in refind:
        if not _refind(sp, whole, touching, source, target, land, place):
            out.dropped.append(dict(sp))
    out.spans.sort(key=lambda x: (x.start, x.end, x.label))
    return out


PROJECTION_ANNOTATOR = "near-duplicate-projection"


def project_duplicates(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    duplicates: Duplicates,
    queries: Iterable[int],
) -> dict:
    """Pre-annotations for the ``queries`` that have a human-annotated near-duplicate.

    Returns {query: PrelabelResult} (annotator ``near-duplicate-projection``, confidence source
    ``duplicate``, score = the pair's Jaccard): the same shape ``annotators.prelabel`` returns,
    so a caller saves both alike and sends only the other queries to the LLM.
    """
    from alllabel.prelabel.annotation import PreAnnotation
    from alllabel.prelabel.run import PrelabelResult

    out = {}
    for q in queries:
        if q in gold:
            continue
        src = duplicates.best_source(q, gold)
        if src is None:
            continue
        j, jac = src
        p = project_spans(texts[j], gold[j], texts[q])
        # Its <Choices> answers are copied as they are: a near-duplicate text, the same answer.
        given = getattr(gold[j], "choices", {})
        chosen = {n: v for n in given if (v := gold[j].chosen(n))}
        ann = PreAnnotation(
            p.spans,
            float(jac),
            PROJECTION_ANNOTATOR,
            "duplicate",
            dropped_not_found=len(p.dropped),
            choices=chosen,
            choice_scores={n: round(float(jac), 6) for n in chosen},
        )
        out[q] = PrelabelResult(q, ann)
    return out
