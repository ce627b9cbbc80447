"""The fused scan kernel against plain numpy: top lists (ties to the smaller index) and grid sums."""

import numpy as np

from alllabel.selection.kernels import scan_rows


def _numpy_scan(block, rows, excluded, grid, width, sentinel):
    lists = np.full((len(rows), width), sentinel, dtype=np.int32)
    sums = np.zeros(len(rows), dtype=np.int64)
    for r, i in enumerate(rows):
        keep = [j for j in range(block.shape[1]) if j != i and not excluded[j]]
        sums[r] = sum(int(np.rint(block[r, j] * grid)) for j in keep)
        order = sorted(keep, key=lambda j: (-block[r, j], j))[:width]
        lists[r, : len(order)] = order
    return lists, sums


def test_scan_rows_matches_numpy_on_ties_and_half_grid_values():
    rng = np.random.default_rng(5)
    for trial in range(30):
        n = int(rng.integers(2, 60))
        b = int(rng.integers(1, n + 1))
        rows = np.sort(rng.choice(n, size=b, replace=False))
        # Few distinct values (many ties) and exact halves of the grid (rint rounds to even).
        block = rng.integers(0, 4, size=(b, n)) / 4.0 + rng.choice([0.0, 0.125], size=(b, n))
        excluded = rng.random(n) < 0.2
        width = int(rng.integers(0, n + 2))
        grid = 4.0  # 0.125 * 4 = 0.5, 0.375 * 4 = 1.5: both halves, rounded to even
        lists = np.empty((b, width), dtype=np.int32)
        vals = np.empty((b, width))
        sums = np.empty(b, dtype=np.int64)
        scan_rows(
            block.copy(),
            rows,
            np.flatnonzero(excluded),
            grid,
            width,
            n,
            lists,
            vals,
            sums,
            np.empty(b),
            False,
        )
        want_lists, want_sums = _numpy_scan(block, rows, excluded, grid, width, n)
        assert np.array_equal(lists, want_lists), trial
        assert np.array_equal(sums, want_sums), trial
        ok = lists < n
        got = np.take_along_axis(block, np.where(ok, lists, 0), axis=1)
        assert np.array_equal(vals[ok], got[ok]), trial


def test_sampled_threshold_and_its_fallback_on_wide_lists():
    # Widths of 64 and more use a threshold guessed from a sample; rows whose values are all
    # equal but a few make the guess too high, so the row is filtered again from -inf.
    rng = np.random.default_rng(9)
    for trial in range(6):
        n, b = 3000, 7
        width = int(rng.choice([64, 200, 801, 2999]))
        block = np.round(rng.random((b, n)), 2)
        block[0] = 0.5
        block[0, rng.choice(n, 40, replace=False)] = 0.9
        block[1, ::16] = 1.0  # the sample sees only top values: guess too high
        rows = np.sort(rng.choice(n, size=b, replace=False))
        excluded = rng.random(n) < 0.1
        lists = np.empty((b, width), dtype=np.int32)
        sums = np.empty(b, dtype=np.int64)
        scan_rows(
            block.copy(),
            rows,
            np.flatnonzero(excluded),
            2.0**20,
            width,
            n,
            lists,
            np.empty((b, width)),
            sums,
            np.empty(b),
            False,
        )
        for r, i in enumerate(rows):
            keep = np.flatnonzero(~excluded & (np.arange(n) != i))
            order = keep[np.lexsort((keep, -block[r, keep]))][:width]
            want = np.full(width, n)
            want[: len(order)] = order
            assert np.array_equal(lists[r], want), (trial, r)
            assert sums[r] == np.rint(block[r, keep] * 2.0**20).astype(np.int64).sum()


def test_normalising_in_the_kernel_matches_bm25_normalise():
    # Raw integer scores (negative ones and rows whose max is <= 0 included) normalised by the
    # kernel give the bits of BM25Similarity._normalise followed by the plain kernel.
    from alllabel.selection.similarity import BM25Similarity

    rng = np.random.default_rng(11)
    for trial in range(20):
        n = int(rng.integers(2, 50))
        b = int(rng.integers(1, n + 1))
        rows = np.sort(rng.choice(n, size=b, replace=False))
        raw = rng.integers(-3, 7, size=(b, n)).astype(float) * 3.0**20
        raw[0] = np.minimum(raw[0], 0.0)
        excluded = rng.random(n) < 0.2
        width, grid = int(rng.integers(0, n)), 2.0**40
        masked = raw.copy()
        masked[np.arange(b), rows] = -np.inf
        rowmax = masked.max(axis=1)
        want = BM25Similarity._normalise(None, raw.copy(), rowmax[:, None])
        outs = []
        for block, fused in ((raw.copy(), True), (want, False)):
            got = (np.empty((b, width), np.int32), np.empty((b, width)), np.empty(b, np.int64))
            seen = np.full(b, np.nan)
            scan_rows(block, rows, np.flatnonzero(excluded), grid, width, n, *got, seen, fused)
            outs.append((got, seen))
        (lists_f, vals_f, sums_f), seen_f = outs[0]
        (lists_p, vals_p, sums_p), _ = outs[1]
        assert np.array_equal(lists_f, lists_p), trial
        assert np.array_equal(sums_f, sums_p), trial
        ok = lists_f < n  # padding has no value
        assert np.array_equal(vals_f[ok], vals_p[ok]), trial
        assert np.array_equal(seen_f, rowmax), trial
