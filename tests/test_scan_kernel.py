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
        scan_rows(block, rows, excluded, grid, width, n, lists, vals, sums)
        want_lists, want_sums = _numpy_scan(block, rows, excluded, grid, width, n)
        assert np.array_equal(lists, want_lists), trial
        assert np.array_equal(sums, want_sums), trial
        ok = lists < n
        got = np.take_along_axis(block, np.where(ok, lists, 0), axis=1)
        assert np.array_equal(vals[ok], got[ok]), trial
