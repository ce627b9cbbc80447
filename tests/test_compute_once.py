"""Work done once: pool-column retrieval, one similarity per corpus, embeddings cached on disk."""

import numpy as np
import pytest

from alllabel import BM25Similarity, SBERTSimilarity, select
from alllabel.selection import engine
from alllabel.selection.retrieval import Demonstration, retrieve
from alllabel.selection.simcache import SimilarityCache
from alllabel.selection.similarity import iter_row_blocks, matrix
from tests.data import mof_texts


def full_row_retrieve(sim, queries, pool, k=3):
    """The previous implementation: full N-wide rows, then the pool's columns."""
    pool_idx = np.unique(np.asarray(pool, dtype=np.int64))
    out = []
    for idx, block in iter_row_blocks(sim, np.asarray(queries, dtype=np.int64)):
        vals = block[:, pool_idx]
        vals[pool_idx[None, :] == idx[:, None]] = -np.inf
        order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
        for r in range(len(idx)):
            out.append(
                [
                    Demonstration(int(pool_idx[c]), float(vals[r, c]))
                    for c in order[r]
                    if np.isfinite(vals[r, c])
                ]
            )
    return out


class CountingBM25(BM25Similarity):
    """The real BM25 backend, counting the full N-wide rows it computes: ``rows`` and the float64
    paths start with ``dense_rows``; the scan's float32 band with ``bandrank.dense_rows32``
    (counted by the ``counted_rows32`` fixture)."""

    full_rows = 0

    def dense_rows(self, idx, out=None):
        self.full_rows += len(idx)
        return super().dense_rows(idx, out)


@pytest.fixture
def counted_rows32(monkeypatch):
    """The scan's float32 rows counted on a ``CountingBM25`` (the real function still runs)."""
    real = engine.dense_rows32

    def counting(sim, idx, out):
        if isinstance(sim, CountingBM25):
            sim.full_rows += len(idx)
        return real(sim, idx, out)

    monkeypatch.setattr(engine, "dense_rows32", counting)


@pytest.fixture(scope="module")
def mof():
    return mof_texts()


def test_pool_columns_give_identical_demonstrations_on_mof(mof):
    rng = np.random.default_rng(0)
    sim = BM25Similarity(mof)
    queries = np.arange(len(mof))
    for pool in (rng.choice(len(mof), 60, replace=False), np.arange(0, 658, 3), [5]):
        assert retrieve(sim, queries, pool, k=3) == full_row_retrieve(
            BM25Similarity(mof), queries, pool, k=3
        )
    U = matrix(sim)  # and the values are U's, bit for bit
    found = retrieve(sim, [10, 400], list(range(0, 600, 7)), k=5)
    assert [[d.similarity for d in row] for row in found] == [
        [float(U[q, d.index]) for d in row] for q, row in zip([10, 400], found)
    ]


def test_after_a_scan_retrieval_computes_no_full_row(mof, counted_rows32):
    sim = CountingBM25(mof)
    sel = select(sim, 30)
    scanned = sim.full_rows
    assert scanned >= len(mof)
    found = retrieve(sim, range(len(mof)), sel.indices, k=3)
    assert sim.full_rows == scanned  # pool columns only; row maxima come from the scan
    assert found == full_row_retrieve(BM25Similarity(mof), range(len(mof)), sel.indices)


def test_similarity_cache_shares_one_object_and_row_maxima(mof, tmp_path):
    cache = SimilarityCache(tmp_path)
    texts = mof[:200]
    sim = cache.get(texts)
    assert cache.get(list(texts)) is sim and cache.get(texts, "bm25") is sim
    select(sim, 20)
    cache.save(sim)
    # A new process (a new cache on the same folder): row maxima come from disk, so retrieval
    # needs no full row at all.
    fresh = SimilarityCache(tmp_path).get(texts)
    assert np.array_equal(fresh._rowmax, sim._rowmax)
    assert cache.get(texts[:150]) is not sim  # another corpus, another similarity
    counting = CountingBM25(texts)
    counting._rowmax[:] = fresh._rowmax
    assert retrieve(counting, range(200), [1, 5, 9], k=2) == retrieve(
        BM25Similarity(texts), range(200), [1, 5, 9], k=2
    )
    assert counting.full_rows == 0


def test_sbert_embeds_each_text_once_across_plan_and_preannotation(mof, tmp_path):
    from alllabel.selection import similarity

    texts = mof[:40]
    calls = []
    similarity.embed_texts(["warm up"])  # load the real model
    for model in similarity._MODELS.values():
        real = model.encode

        def counting(sentences, *a, _real=real, **kw):  # a spy on the real model: it still encodes
            calls.extend(sentences)
            return _real(sentences, *a, **kw)

        model.encode = counting
    try:
        plan = SimilarityCache(tmp_path).get(texts, "sbert")
        sel = select(plan, 8)
        # Pre-annotation in another process (a fresh cache object on the same folder), then a
        # re-plan after three tasks were added: only the new texts reach the model.
        pre = SimilarityCache(tmp_path).get(texts, "sbert")
        retrieve(pre, range(40), sel.indices)
        assert sorted(calls) == sorted(texts)
        grown = texts + mof[40:43]
        select(SimilarityCache(tmp_path).get(grown, "sbert"), 8)
        assert sorted(calls) == sorted(grown)
        assert np.array_equal(pre._e, plan._e)
        direct = SBERTSimilarity(texts)  # uncached: the same similarity
        assert np.allclose(matrix(direct), matrix(plan), atol=1e-6)
    finally:
        for model in similarity._MODELS.values():
            model.__dict__.pop("encode", None)
