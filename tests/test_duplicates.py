"""Near-duplicates, length outliers and annotation projection (issue 10)."""

import difflib
import random

import numpy as np
import pytest

from alllabel import BM25Similarity, select
from alllabel.llm.client import LLMClient, LLMConfig
from alllabel.prelabel.annotators import LLMAnnotator
from alllabel.prelabel.carry_over import (
    PROJECTION_ANNOTATOR,
    align,
    project_duplicates,
    project_spans,
)
from alllabel.prelabel.prompt import LabelSchema, example_from_spans
from alllabel.prelabel.run import prelabel
from alllabel.selection.duplicates import find_duplicates, jaccard, normalise, shingles
from alllabel.selection.screening import LengthRule, length_outliers, screen
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI, gold_responder


def _spans(rec):
    return [{"start": e["start"], "end": e["end"], "label": e["label"]} for e in rec["entities"]]


def _edit_outside_spans(text, spans, rng):
    """A one-character copy: one character outside every entity replaced."""
    inside = {p for s in spans for p in range(s["start"] - 1, s["end"] + 1)}
    free = [p for p, c in enumerate(text) if p not in inside and c.isalpha()]
    p = rng.choice(free)
    return text[:p] + ("é" if text[p] != "é" else "a") + text[p + 1 :], p


@pytest.fixture(scope="module")
def seeded():
    """150 MOF paragraphs plus 30 one-character copies (with unicode and CRLF variants)."""
    recs = mof_records()[:150]
    texts = [r["text"] for r in recs]
    spans = [_spans(r) for r in recs]
    rng = random.Random(5)
    copies = {}
    for src in rng.sample(range(150), 30):
        text, p = _edit_outside_spans(texts[src], spans[src], rng)
        if len(copies) % 3 == 1:
            text = text.replace(". ", ".\r\n", 1)  # the copy also differs in line breaks
        copies[len(texts)] = src
        texts.append(text)
        spans.append(_shift_gold(texts[src], spans[src], text))
    return texts, spans, copies


def _shift_gold(src, spans, dst):
    """Reference offsets on the copy, from an independent character diff (SequenceMatcher on chars)."""
    sm = difflib.SequenceMatcher(None, src, dst, autojunk=False)
    out = []
    for s in spans:
        m = [
            (i1, j1, i2)
            for tag, i1, i2, j1, j2 in sm.get_opcodes()
            if tag == "equal" and i1 <= s["start"] and s["end"] <= i2
        ]
        i1, j1, _ = m[0]
        out.append({"start": j1 + s["start"] - i1, "end": j1 + s["end"] - i1, "label": s["label"]})
    return out


def test_shingles_normalise_case_space_and_width():
    assert normalise("  H₂O\r\n  in ＤＭＦ ") == "h2o in dmf"
    assert np.array_equal(shingles("Zn(NO3)2 in\tDMF"), shingles("zn(no3)2 in DMF"))
    assert jaccard(shingles("abcdefgh"), shingles("abcdefgh")) == 1.0
    assert len(shingles("ab")) == 1 and len(shingles("")) == 0


def test_seeded_one_character_copies_are_all_found(seeded):
    texts, _, copies = seeded
    d = find_duplicates(texts)
    pairs = {tuple(p) for p in d.pairs.tolist()}
    for copy, src in copies.items():
        assert (src, copy) in pairs
        assert (
            d.representative[copy] != copy
        )  # represented by its source (or the source's own representative)
    # Every reported pair really is at or above the threshold, and MOF's own template siblings
    # below it are not reported.
    for (i, j), v in zip(d.pairs.tolist(), d.jaccard.tolist()):
        assert v >= d.threshold and v == jaccard(shingles(texts[i]), shingles(texts[j]))


def test_no_near_duplicate_pair_in_the_queue(seeded):
    texts, _, copies = seeded
    sim = BM25Similarity(texts)
    d = find_duplicates(texts)
    paper = select(sim, 40)
    # Paper-exact: the similarity stage rewards copies (each is the other's top-1).
    assert d.within(paper.indices)
    s = screen(texts)
    sel = select(sim, 40, exclude=s.excluded)
    assert d.within(sel.indices) == []
    assert not set(sel.indices) & set(copies)
    # Independently of the detector: no two queued texts are within a few characters.
    for a in sel.indices:
        for b in sel.indices:
            if a < b:
                assert (
                    difflib.SequenceMatcher(None, texts[a], texts[b], autojunk=False).quick_ratio()
                    < 0.99
                )


def test_annotated_task_represents_its_cluster(seeded):
    texts, _, copies = seeded
    copy, src = next(iter(copies.items()))
    s = screen(texts, chosen=[copy])  # the copy was annotated first
    assert not s.excluded[copy] and s.excluded[src]
    assert (
        s.duplicates.representative[src] == copy
        and f"near-duplicate of task #{copy}" in s.reasons[src]
    )
    sel = select(BM25Similarity(texts), 20, pre_chosen=[copy], exclude=s.excluded)
    assert src not in sel.indices


def test_duplicate_of_annotated_task_is_projected_without_llm(seeded):
    texts, spans, copies = seeded
    labels = sorted({s["label"] for sp in spans for s in sp})
    gold = {src: spans[src] for src in copies.values()}
    gold.update({i: spans[i] for i in range(5) if i not in copies})
    d = find_duplicates(texts, priority=sorted(gold))
    queries = [i for i in range(len(texts)) if i not in gold]
    projected = project_duplicates(texts, gold, d, queries)
    assert set(copies) <= set(projected)
    for q in set(projected) - set(copies):  # MOF's own template siblings of annotated tasks
        j, jac = d.best_source(q, gold)
        assert jac >= d.threshold and jaccard(shingles(texts[q]), shingles(texts[j])) == jac
    for copy in copies:
        a = projected[copy].annotation
        assert (
            a.annotator == PROJECTION_ANNOTATOR
            and a.confidence_source == "duplicate"
            and a.dropped_not_found == 0
        )
        assert [(x.start, x.end, x.label) for x in a.spans] == sorted(
            (s["start"], s["end"], s["label"]) for s in spans[copy]
        )
        assert all(texts[copy][x.start : x.end] == x.text for x in a.spans)
    # The rest goes to the LLM; the copies never do.
    rest = [q for q in queries if q not in projected][:12]
    by_text = {t: example_from_spans(t, spans[i]).entities for i, t in enumerate(texts)}
    with FakeOpenAI(gold_responder(by_text)) as fake:
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        results = prelabel(
            texts,
            gold,
            LLMAnnotator(client, LabelSchema(labels)),
            BM25Similarity(texts),
            queries=rest,
        )
        asked = [req["messages"][-1]["content"] for req in fake.requests]
    assert len(results) == len(asked) == len(rest)
    assert not any(texts[c] in m for c in copies for m in asked)


def test_projection_exact_on_unicode_and_crlf():
    src = "Cu(NO₃)₂·3H₂O (0.2 mmol) in ＤＭＦ/EtOH\r\nheated at 120 °C 😀 for 24 h."
    dst = "Note: Cu(NO₃)₂·3H₂O (0.2 mmol) in ＤＭＦ/EtOH\nheated at 150 °C 😀 for 24 h."
    ents = [
        ("Cu(NO₃)₂·3H₂O", "metal"),
        ("ＤＭＦ", "solvent"),
        ("EtOH", "solvent"),
        ("120 °C", "temp"),
        ("24 h", "time"),
    ]
    spans = [{"start": src.index(t), "end": src.index(t) + len(t), "label": lab} for t, lab in ents]
    p = project_spans(src, spans, dst)
    got = [(dst[s.start : s.end], s.label) for s in p.spans]
    assert got == [
        ("Cu(NO₃)₂·3H₂O", "metal"),
        ("ＤＭＦ", "solvent"),
        ("EtOH", "solvent"),
        ("150 °C", "temp"),
        ("24 h", "time"),
    ]
    assert p.edited == 1 and not p.dropped
    assert all(s.text == dst[s.start : s.end] for s in p.spans)


def test_projection_rule_edited_refound_dropped():
    src = "Y(NO3)3·6H2O in ethanol, then DMF and water; Y-ftw-MOF-2 formed."
    dst = "Tb(NO3)3·5H2O in methanol, then water and DMF; Tb-ftw-MOF-2 formed. ethanol wash."
    ents = [
        ("Y(NO3)3·6H2O", "metal"),
        ("ethanol", "solvent"),
        ("DMF", "solvent"),
        ("Y-ftw-MOF-2", "product"),
    ]
    spans = [{"start": src.index(t), "end": src.index(t) + len(t), "label": lab} for t, lab in ents]
    p = project_spans(src, spans, dst)
    got = {(dst[s.start : s.end], s.start, s.label) for s in p.spans}
    # Edited inside: the metal salt and the product keep their role. "DMF" was aligned with "water"
    # (replaced whole: not carried over) and is re-found next to it. "ethanol" became part of
    # "methanol"; the only whole-word "ethanol" left is far away (another mention): dropped.
    assert got == {
        ("Tb(NO3)3·5H2O", 0, "metal"),
        ("DMF", dst.index("DMF"), "solvent"),
        ("Tb-ftw-MOF-2", dst.index("Tb-ftw"), "product"),
    }
    assert (p.edited, p.refound) == (2, 1) and [d["start"] for d in p.dropped] == [
        src.index("ethanol")
    ]


def test_alignment_is_character_exact_on_long_texts():
    words = [r["text"] for r in mof_records()[:80]]
    a = "\n".join(words)  # ~50,000 characters
    b = a[:20000] + "X" + a[20001:30000] + a[30010:]
    ops = align(a, b)
    rebuilt = "".join(b[j1:j2] if tag != "equal" else a[i1:i2] for tag, i1, i2, j1, j2 in ops)
    assert rebuilt == b
    assert sum(i2 - i1 for tag, i1, i2, *_ in ops if tag == "equal") >= len(a) - 12


def test_length_outliers_are_not_offered_but_remain_queries():
    texts = [r["text"] for r in mof_records()[:100]]
    texts.append(" ".join(texts[:300] * 3)[:200_000])  # one 200,000-character paragraph
    texts.append("DMF")  # one word
    mask, reasons = length_outliers(texts)
    assert mask.tolist() == [False] * 100 + [True, True]
    assert "too long" in reasons[100] and "too short" in reasons[101]
    sim = BM25Similarity(texts)
    assert 100 in select(sim, 10).indices  # the paper's core-set picks it first
    s = screen(texts)
    sel = select(sim, 10, exclude=s.excluded)
    assert 100 not in sel.indices and 101 not in sel.indices
    assert s.summary()["length_outliers"] == 2


def test_length_rule_on_mof_excludes_nothing_and_small_corpora_use_min_tokens():
    texts = [r["text"] for r in mof_records()]
    assert not length_outliers(texts)[0].any()
    assert length_outliers(["a b", "one two three four"])[0].tolist() == [True, False]
    assert LengthRule().bounds(np.array([5.0, 500.0])) == (3.0, float("inf"))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ALPHABET = st.sampled_from(list("abcdeé xyz0.1\r\n(·)₂😀ＤＭ"))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_projection_maps_untouched_spans_exactly(data):
    """Random texts (unicode, CRLF, emoji) and random edits: a span no edit touches lands exactly on
    the same characters, shifted by the edits before it; every projected span is the target's text."""
    text = data.draw(st.text(_ALPHABET, min_size=20, max_size=120))
    spans = []
    for _ in range(data.draw(st.integers(1, 5))):
        s = data.draw(st.integers(0, len(text) - 2))
        spans.append(
            {
                "start": s,
                "end": data.draw(st.integers(s + 1, min(len(text), s + 8))),
                "label": data.draw(st.sampled_from("AB")),
            }
        )
    edits = sorted(
        data.draw(
            st.lists(
                st.tuples(
                    st.integers(0, len(text)), st.integers(0, 3), st.text(_ALPHABET, max_size=3)
                ),
                max_size=3,
            )
        )
    )
    target, shift, pos, touched = [], [], 0, []
    for at, cut, ins in edits:
        if at < pos:
            continue
        target.append(text[pos:at])
        touched.append((at, min(len(text), at + cut)))
        target.append(ins)
        shift.append((at, len(ins) - (min(len(text), at + cut) - at)))
        pos = min(len(text), at + cut)
    target.append(text[pos:])
    dst = "".join(target)
    p = project_spans(text, spans, dst)
    assert all(dst[s.start : s.end] == s.text and s.start < s.end for s in p.spans)
    placed = {(s.start, s.end, s.label) for s in p.spans}
    for sp in spans:
        # Untouched: no edit within one character of the span (a bordering insertion may merge
        # words); no other span of its label overlapping (those compete for the same place).
        if any(a <= sp["end"] and sp["start"] <= b for a, b in touched):
            continue
        if any(
            o is not sp
            and o["label"] == sp["label"]
            and o["start"] < sp["end"]
            and sp["start"] < o["end"]
            for o in spans
        ):
            continue
        d = sum(delta for at, delta in shift if at < sp["start"])
        expect = (sp["start"] + d, sp["end"] + d, sp["label"])
        assert dst[expect[0] : expect[1]] == text[sp["start"] : sp["end"]]
        assert expect in placed or not _whole(text, sp), (text, dst, sp, p)
    assert len(p.spans) + len(p.dropped) == len(spans)


def _whole(text, sp):
    from alllabel.text.spans import is_whole_word

    return is_whole_word(text, sp["start"], sp["end"])
