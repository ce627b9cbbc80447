"""Similarity backends against their references (rank-bm25, sentence-transformers)."""

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from alllabel import BM25Similarity, SBERTSimilarity, select
from alllabel.selection.similarity import matrix
from alllabel.text.tokenize import tokenize
from tests.data import mof_texts


def test_tokenizer_handles_chemistry_and_unicode():
    assert tokenize("Cu(ClO4)2·6H2O (0.37 g)") == ["cu", "clo4", "2", "6h2o", "0.37", "g"]
    assert tokenize("H₂O/EtOH at 120 °C") == ["h2o", "etoh", "at", "120", "c"]  # NFKC: subscripts
    assert tokenize("ＤＭＦ") == ["dmf"]  # full-width
    assert tokenize("金属有机框架 MOF-5 😀") == ["金", "属", "有", "机", "框", "架", "mof", "5"]


def test_bm25_raw_scores_match_rank_bm25():
    texts = mof_texts(120)
    ours = BM25Similarity(texts)
    ref = BM25Okapi([tokenize(t) for t in texts])
    for i in (0, 7, 55, 119):
        np.testing.assert_allclose(
            ours.raw_scores(i), ref.get_scores(tokenize(texts[i])), rtol=1e-7, atol=1e-9
        )


def test_bm25_normalised_rows_and_columns():
    texts = mof_texts(80)
    sim = BM25Similarity(texts)
    ref = BM25Okapi([tokenize(t) for t in texts])
    U = matrix(sim)
    for i in (3, 40):
        s = ref.get_scores(tokenize(texts[i]))
        s[i] = -np.inf
        expect = np.maximum(s, 0) / s.max()
        np.testing.assert_allclose(np.delete(U[i], i), np.delete(expect, i), rtol=1e-7)
    off = ~np.eye(80, dtype=bool)
    assert U[off].min() >= 0 and np.isclose(U[off].max(), 1) and (U.max(axis=1) >= 1 - 1e-12).all()
    for j in (0, 11, 79):  # columns are bit-identical to the rows
        assert np.array_equal(sim.column(j), U[:, j])


def test_bm25_identical_texts_tie_exactly():
    texts = mof_texts(30) + mof_texts(2)  # items 30, 31 duplicate 0, 1
    U = matrix(BM25Similarity(texts))
    assert np.array_equal(U[5, [0, 1]], U[5, [30, 31]])


def test_bm25_streaming_equals_dense_selection():
    texts = mof_texts(300)
    dense = select(matrix(BM25Similarity(texts)), 40)
    for rows in (17, 128):
        assert select(BM25Similarity(texts), 40, block_rows=rows).indices == dense.indices
    # A small dense_terms split moves terms between the BLAS and sparse paths: same answer.
    assert select(BM25Similarity(texts, dense_terms=3), 40, block_rows=50).indices == dense.indices


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "no texts"),
        (["ok text", "  "], "text #1 is empty"),
        (["a", None], "not a string"),
        (["§§", "x"], "no word"),
    ],
)
def test_bm25_bad_texts(bad, message):
    with pytest.raises(ValueError, match=message):
        BM25Similarity(bad)


def test_select_rejects_empty_text():
    with pytest.raises(ValueError, match="text #2 is empty"):
        select(BM25Similarity(["a b", "c d", ""]), 1)


@pytest.fixture(scope="module")
def sbert_texts():
    return mof_texts(60)


def test_sbert_matches_sentence_transformers(sbert_texts):
    from sentence_transformers import SentenceTransformer

    from alllabel.selection.similarity import default_sbert_model

    sim = SBERTSimilarity(sbert_texts)
    e = SentenceTransformer(default_sbert_model(), device="cpu").encode(
        sbert_texts, normalize_embeddings=True
    )
    np.testing.assert_allclose(matrix(sim), e @ e.T, atol=1e-5)
    assert np.array_equal(sim.column(9), matrix(sim)[:, 9])
    assert select(sim, 12, block_rows=7).indices == select(matrix(sim), 12).indices


def _grid_sums_per_cell(sim, excluded, grid):
    """Every row's grid sum the way the full scan sums it: cell by cell (engine._scan_block)."""
    from alllabel.selection.engine import _scan_block

    rows = np.arange(sim.n)
    return _scan_block(sim, rows, 1, sim.n, excluded, grid)[1]


@pytest.mark.parametrize("kind", ["bm25", "sbert"])
def test_seed_from_linear_sums_is_the_per_cell_argmin(kind):
    # Duplicated texts / vectors: exact ties, which must go to the smaller index; exclusions
    # take columns out of the sums (and an excluded row's own cell is not counted twice).
    from alllabel.selection.rowsums import approx_grid_sums, exact_grid_sums, seed

    rng = np.random.default_rng(3)
    for trial in range(6):
        n = int(rng.integers(20, 90))
        if kind == "bm25":
            base = mof_texts(n // 2 + 1)
            texts = [base[int(i)] for i in rng.integers(0, len(base), size=n)]
            sim = BM25Similarity(texts)
            sim.row_max()
        else:
            vec = rng.integers(-2, 3, size=(n // 3 + 1, 5)).astype(float) + np.eye(1, 5)
            vec = vec[rng.integers(0, len(vec), size=n)]
            sim = SBERTSimilarity([f"t{i}" for i in range(n)], embeddings=vec)
        excluded = np.flatnonzero(rng.random(n) < 0.2)
        allowed = np.ones(n, dtype=bool)
        allowed[excluded] = False
        # A coarse grid makes rint move the sums a lot: the linear sums alone would often
        # pick another seed; the exact sums of the near rows must decide.
        for grid in (2.0, 4.0, 2.0**30):
            want = _grid_sums_per_cell(sim, excluded, grid)
            assert np.array_equal(exact_grid_sums(sim, np.arange(n), excluded, grid), want)
            approx, tol = approx_grid_sums(sim, excluded, grid)
            assert (np.abs(approx - want) <= tol).all(), (trial, grid)
            masked = np.where(allowed, want, np.iinfo(np.int64).max)
            assert seed(sim, allowed, excluded, grid) == int(np.argmin(masked)), (trial, grid)


def test_bm25_scan_ranks_raw_rows_without_cell_sums():
    # The selection's scan ranks BM25's raw rows (no per-cell normalising or summing) and takes
    # the seed from linear sums: the same picks as the dense matrix, exclusions included.
    from alllabel.selection.blocks import LocalRunner
    from alllabel.selection.engine import Engine

    texts = mof_texts(120) + mof_texts(10)  # ten exact duplicates: tied rows and columns
    sim = BM25Similarity(texts)
    assert sim.rank_raw
    ex = np.zeros(len(texts), dtype=bool)
    ex[[4, 50, 121]] = True
    eng = Engine(sim, 3, 32, None, ~ex, LocalRunner(1))
    eng.scan(30)
    assert eng.rowsum is None  # the cell sums were skipped
    U = matrix(BM25Similarity(texts))
    for kw in ({}, {"exclude": ex}):
        want = select(U, 25, **kw)
        got = select(sim, 25, block_rows=32, **kw)
        assert (got.indices, got.stages) == (want.indices, want.stages)


def test_sbert_columns_computed_ahead_give_the_dense_picks():
    # The diversity stage computes SBERT columns 16 at a time (the pick and the likely next
    # ones, SBERTSimilarity.columns); bit-identical to column(j), so the picks are the dense
    # matrix's, on tie-heavy vectors and with pre-chosen items.
    rng = np.random.default_rng(4)
    for trial in range(4):
        n = 300
        vec = rng.integers(0, 3, size=(n, 4)).astype(float) + np.eye(1, 4)
        sim = SBERTSimilarity([f"t{i}" for i in range(n)], embeddings=vec)
        js = rng.choice(n, size=5, replace=False)
        assert all(np.array_equal(c, sim.column(int(j))) for c, j in zip(sim.columns(js), js))
        U = matrix(sim)
        pre = rng.choice(n, size=trial * 3, replace=False).tolist()
        for budget in (40, 100):
            want = select(U, budget, pre_chosen=pre)
            got = select(sim, budget, pre_chosen=pre)
            assert (got.indices, got.stages) == (want.indices, want.stages), (trial, budget)
