"""BM25 top lists from float32 rows (selection/bandrank.py) against the float64 scan, bit for bit."""

import re

import numpy as np

from alllabel import BM25Similarity, select
from alllabel.selection.bandrank import band_rank, dense_rows32
from alllabel.selection.engine import _rank_raw, _rank_raw64
from alllabel.selection.similarity import matrix
from tests.data import mof_texts


def _texts(n: int, seed: int = 0) -> list[str]:
    """Paragraphs mixed from MOF sentences (bench/corpus.py's recipe): many close scores, and
    exact duplicates (tied rows and columns), a text sharing no word with any other (a row of
    zeros) and a one-word text."""
    sentences = [s for t in mof_texts() for s in re.split(r"(?<=[.;])\s+", t) if len(s) > 20]
    rng = np.random.default_rng(seed)
    texts = [
        " ".join(sentences[j] for j in rng.integers(0, len(sentences), size=int(k)))
        for k in rng.integers(1, 5, size=n - 8)
    ]
    texts += texts[:6] + ["zzqx wvvy", "solution"]
    return texts


def _both(sim, rows, excluded, width):
    out = []
    for fn in (_rank_raw, _rank_raw64):
        lists = np.empty((len(rows), width), dtype=np.int32)
        rowmax = np.empty(len(rows))
        fn(sim, rows, excluded, width, sim.n, lists, np.empty((len(rows), width)), rowmax, True)
        out.append((lists, rowmax))
    return out


def test_band_lists_and_row_maxima_are_the_float64_scans():
    sim = BM25Similarity(_texts(1500))
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.choice(1492, 150, replace=False), np.arange(1492, 1500)])
    excluded = np.sort(rng.choice(1500, 60, replace=False))
    for ex in (np.empty(0, dtype=np.int64), excluded):
        for width in (1, 3, 40, 300, 1500 - len(ex)):
            (got, got_max), (want, want_max) = _both(sim, rows, ex, width)
            assert np.array_equal(got, want), (len(ex), width)
            assert np.array_equal(got_max, want_max), (len(ex), width)


def test_rows_the_band_cannot_hold_go_the_float64_way():
    # Beyond the buffer (8 x width, at least 4096) a row of zeros ties everything: its band
    # fails and the float64 path ranks it; short lists fill and narrow the buffer mid-row.
    n = 4600
    sim = BM25Similarity(_texts(n, seed=2))
    rows = np.array([0, 17, 900, n - 2, n - 1])
    block = dense_rows32(sim, rows, np.empty((len(rows), n), dtype=np.float32))
    failed = band_rank(
        sim, block, rows, np.empty(0, np.int64), 3, n, np.empty((5, 3), np.int32), np.empty(5)
    )
    assert rows[failed].tolist() == [n - 2]  # "zzqx wvvy": every other item scores 0
    for width in (3, 15, 700):
        (got, got_max), (want, want_max) = _both(sim, rows, np.array([5, 900]), width)
        assert np.array_equal(got, want) and np.array_equal(got_max, want_max), width


def test_selection_through_the_band_gives_the_dense_picks():
    texts = _texts(700, seed=3)
    sim = BM25Similarity(texts)
    U = matrix(BM25Similarity(texts))
    ex = np.zeros(len(texts), dtype=bool)
    ex[[3, 40, 698]] = True
    for kw in ({}, {"exclude": ex}, {"pre_chosen": [1, 2, 700 - 8]}):
        want = select(U, 60, **kw)
        got = select(sim, 60, block_rows=64, **kw)
        assert (got.indices, got.stages) == (want.indices, want.stages), kw


def test_band_depths_are_the_float64_depths():
    # Uncertainty depths (position of the first D1 item) from float32 rows, exactly: D1 sets
    # with duplicates (ties broken by index), exclusions, and a row whose only D1 item is
    # itself (the float64 way).
    from alllabel.selection.engine import _depth_block, _depths64

    n = 1500
    sim = BM25Similarity(_texts(n, seed=4))
    rng = np.random.default_rng(5)
    rows = np.concatenate([rng.choice(n - 8, 120, replace=False), np.arange(n - 8, n)])
    excluded = np.sort(rng.choice(n, 40, replace=False))
    for d1_size in (1, 5, 60, 400):
        in_d1 = np.zeros(n, dtype=bool)
        in_d1[rng.choice(n, d1_size, replace=False)] = True
        in_d1[[0, n - 8]] = True  # text 0 and its duplicate: tied D1 items
        in_d1[excluded] = False
        for ex in (np.empty(0, dtype=np.int64), excluded):
            got, _ = _depth_block(sim, rows, in_d1, ex)
            want = _depths64(sim, rows, in_d1, ex)
            assert np.array_equal(got, want), (d1_size, len(ex))
    only_self = np.zeros(n, dtype=bool)
    only_self[rows[0]] = True
    got, _ = _depth_block(sim, rows[:1], only_self, np.empty(0, np.int64))
    assert np.array_equal(got, _depths64(sim, rows[:1], only_self, np.empty(0, np.int64)))
