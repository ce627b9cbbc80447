"""Incremental re-plans (replan.Planner) give the picks of a full re-plan on the same data."""

import numpy as np
import pytest

from alllabel import BM25Similarity, select
from alllabel.selection.replan import Planner
from alllabel.selection.similarity import SBERTSimilarity
from tests.data import mof_texts


def _vectors(rng, n, dim=4):
    # Few distinct small-integer vectors: many exact ties between scores.
    return rng.integers(0, 3, size=(n, dim)).astype(float) + np.eye(1, dim)


def _full(texts, vectors, budget, **kw):
    return select(SBERTSimilarity(texts, embeddings=vectors), budget, **kw)


def _same(a, b):
    assert (a.indices, a.stages) == (b.indices, b.stages)


def _same_state(p, fresh):
    """Every kept prefix is a prefix of the full ranking; complete lists hold all of it."""
    assert p.rowsum is None and fresh.rowsum is None  # SBERT: the seed from linear sums
    assert np.array_equal(p.sim._e, fresh.sim._e)  # grown / cut, not rebuilt: the same bits
    for r in range(p.n):
        m = min(p.length[r], fresh.length[r])
        assert np.array_equal(p.lists[r, :m], fresh.lists[r, :m]), r
        if p.complete[r]:
            assert p.length[r] == fresh.length[r], r
    for j, col in p.columns.items():  # kept columns of U, carried through adds and removals
        assert np.array_equal(col, fresh.sim.column(j)), j


@pytest.mark.parametrize("seed", range(4))
def test_sbert_add_remove_annotate_equal_full_replan(seed):
    rng = np.random.default_rng(seed)
    n = 140  # 140 -> 170 -> 145 -> 157
    texts = [f"task {i}" for i in range(n)]
    vec = _vectors(rng, n)
    budget = 12
    p = Planner(texts, kind="sbert", embeddings=vec, budget=budget, slack=4, block_rows=17)
    _same(p.select(budget), _full(texts, vec, budget))
    assert len(p.columns) >= 2  # the diversity stage's columns are kept for the next plan

    new = _vectors(rng, 30)
    p.add([f"new {i}" for i in range(30)], embeddings=new)
    assert p.last_rescan is None  # merged, not rescanned
    texts, vec = texts + [f"new {i}" for i in range(30)], np.vstack([vec, new])
    _same_state(p, Planner(texts, kind="sbert", embeddings=vec, budget=budget, slack=4))
    _same(p.select(budget), _full(texts, vec, budget))

    gone = rng.choice(len(texts), size=25, replace=False)
    cached = set(p.columns)
    p.remove(gone)
    assert len(p.columns) == len(cached - set(gone.tolist()))  # the others' columns are kept
    assert p.last_rescan is None
    keep = np.setdiff1d(np.arange(len(texts)), gone)
    texts, vec = [texts[i] for i in keep], vec[keep]
    _same_state(p, Planner(texts, kind="sbert", embeddings=vec, budget=budget, slack=4))
    _same(p.select(budget), _full(texts, vec, budget))

    # Lists cut short by the removal: a new item enters one only above its last value.
    new = _vectors(rng, 12)
    p.add([f"later {i}" for i in range(12)], embeddings=new)
    texts, vec = texts + [f"later {i}" for i in range(12)], np.vstack([vec, new])
    assert p.last_rescan is None and (p.length < p.width).any()
    _same_state(p, Planner(texts, kind="sbert", embeddings=vec, budget=budget, slack=4))
    _same(p.select(budget), _full(texts, vec, budget))

    # Annotations beyond the slack: lists short of unchosen items are recomputed row by row.
    pre = rng.choice(len(texts), size=9, replace=False).tolist()
    _same(p.select(budget, pre_chosen=pre), _full(texts, vec, budget, pre_chosen=pre))
    assert p.last_rescan is None
    pre += rng.choice(np.setdiff1d(np.arange(len(texts)), pre), size=30, replace=False).tolist()
    _same(p.select(budget, pre_chosen=pre), _full(texts, vec, budget, pre_chosen=pre))


def test_add_with_excluded_new_items_and_complete_lists():
    rng = np.random.default_rng(7)
    texts = [f"t{i}" for i in range(20)]
    vec = _vectors(rng, 20, dim=3)
    p = Planner(texts, kind="sbert", embeddings=vec, budget=5, slack=40, exclude=[3])
    new = _vectors(rng, 6, dim=3)
    p.add([f"n{i}" for i in range(6)], embeddings=new, exclude=[1, 4])
    assert p.last_rescan is None
    allv = np.vstack([vec, new])
    all_texts = texts + [f"n{i}" for i in range(6)]
    want = _full(all_texts, allv, 5, exclude=[3, 21, 24])
    _same(p.select(5), want)
    fresh = Planner(
        all_texts, kind="sbert", embeddings=allv, budget=5, slack=40, exclude=[3, 21, 24]
    )
    _same_state(p, fresh)


def test_n_crossing_a_power_of_two_needs_no_rescan():
    rng = np.random.default_rng(1)
    texts = [f"t{i}" for i in range(30)]
    vec = _vectors(rng, 30)
    p = Planner(texts, kind="sbert", embeddings=vec, budget=4)
    p.add(["a", "b", "c"], embeddings=_vectors(rng, 3))  # N 30 -> 33 crosses 32
    assert p.last_rescan is None
    _same(p.select(4), _full(p.texts, p.vectors, 4))
    p.remove([0, 5])  # 33 -> 31, back under 32
    assert p.last_rescan is None
    _same(p.select(4), _full(p.texts, p.vectors, 4))


def test_bm25_changes_rescan_and_match_full_replan():
    texts = mof_texts(160)
    p = Planner(texts[:120], budget=10)
    p.add(texts[120:])
    assert "idf" in p.last_rescan
    _same(p.select(10), select(BM25Similarity(texts), 10))
    p.remove(range(0, 160, 7))
    kept = [t for i, t in enumerate(texts) if i % 7]
    _same(p.select(10, pre_chosen=[5]), select(BM25Similarity(kept), 10, pre_chosen=[5]))


def test_add_appends_in_spare_rows_and_leaves_the_callers_vectors_alone():
    rng = np.random.default_rng(2)
    vec = rng.standard_normal((40, 6))
    given = vec.copy()
    p = Planner([f"t{i}" for i in range(40)], kind="sbert", embeddings=vec, budget=4)
    buffers = {name: p._spare[name] for name in ("lists", "vals", "quantised")}
    new = rng.standard_normal((2, 6))
    p.add(["a", "b"], embeddings=new)  # 40 -> 42 fits the sixteenth of spare rows
    assert p.lists.base is buffers["lists"] and p.vals.base is buffers["vals"]
    assert p.sim._e.base is buffers["quantised"]
    assert np.array_equal(vec, given)  # the vectors were normalised in a copy
    all_vec = np.vstack([given, new])
    _same(p.select(4), _full(p.texts, all_vec, 4))
    assert np.array_equal(p.sim._e, SBERTSimilarity(p.texts, embeddings=all_vec)._e)


@pytest.mark.parametrize("seed", [35, 42, 48, 50])  # seeds where a misread changes the picks
def test_plans_reading_past_a_grown_complete_list_see_its_end(seed):
    # Complete lists (the whole ranking) padded with the end-of-ranking sentinel N; an add makes
    # that N a real item. A budget of nearly every item makes the uncertainty stage read one
    # entry past a list's end: it must read as the end, not as the item that now has that index.
    rng = np.random.default_rng(seed)
    vec = _vectors(rng, 10, dim=3)
    p = Planner([f"t{i}" for i in range(10)], kind="sbert", embeddings=vec, budget=5, slack=64)
    assert p.complete.all()
    new = _vectors(rng, 3, dim=3)
    p.add(["a", "b", "c"], embeddings=new)
    all_vec = np.vstack([vec, new])
    _same(p.select(12), _full(p.texts, all_vec, 12))
