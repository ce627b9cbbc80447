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
