"""New items merged into the kept top lists (``replan.Planner.add``).

An import's new rows of U are, read by column, the old rows' new cells (cosine is symmetric).
Nearly every cell loses: a row's list holds its best ``width`` of N items, so a new item enters
only when it beats the list's last value - about width / N of the cells (~9 of 1,000 new items
per row at 100k). ``winners`` takes, block by block of new rows, the cells above their old
row's threshold (one vectorised comparison over the block as it lies, no transposed walk);
``merge`` then merges each old row's winners of the whole import at once, from the first
position they change (a merge per block of new rows rewrote most lists once per block).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from alllabel.selection.blocks import default_workers
from alllabel.selection.engine import _buffer
from alllabel.selection.kernels import rank_rows


def thresholds(
    vals: np.ndarray, length: np.ndarray, complete: np.ndarray, width: int
) -> np.ndarray:
    """The value a new item must exceed to enter each list (rows 0..len(complete)-1).

    A list is a prefix of its row's ranking; a new item has a larger index than every listed
    one, so on a tie it ranks after the last: it must be strictly greater. A new item above the
    last value ranks before every unlisted old item, so a list grown by all such items is still
    a prefix. A complete list (the whole ranking) with room takes any item (-inf); an empty
    incomplete one none (inf)."""
    n0 = len(complete)
    size = length[:n0]
    thr = np.where(size > 0, vals[np.arange(n0), np.maximum(size - 1, 0)], np.inf)
    return np.where(complete & (size < width), -np.inf, thr)


def winners(block: np.ndarray, thr: np.ndarray, items: np.ndarray, ok: np.ndarray):
    """The cells of a block of new rows that enter an old row's list: (old rows, items, values).

    ``block[c, r]`` = U[items[c], r] = U[r, items[c]] for the old rows r < len(thr); ``ok``:
    the block rows that may be ranked (the others enter no list). Ordered by c, then r."""
    old = block[:, : len(thr)]
    c, r = np.nonzero(old > thr[None, :])
    keep = ok[c]
    c, r = c[keep], r[keep]
    return r, items[c], old[c, r]


def grow_block(sim, idx, thr, rankable, excluded, width, kept):
    """A block of new rows of U, computed once: U is symmetric (cosine), so its old columns are
    the old rows' new cells - their ``winners`` - and its kept columns the kept columns' new
    cells; then it is ranked in place for the new rows' own lists."""
    block = sim.rows(idx, out=_buffer("rows", (len(idx), sim.n), np.float64))
    cells = np.ascontiguousarray(block[:, kept].T)
    won = winners(block, thr, idx, rankable[idx])
    lists = np.empty((len(idx), width), dtype=np.int32)
    vals = np.empty((len(idx), width))
    rank_rows(block, idx, excluded, width, sim.n, lists, vals, np.empty(len(idx)), False)
    return lists, vals, won, cells


def merge(found: list, lists: np.ndarray, vals: np.ndarray, length: np.ndarray) -> None:
    """Merge the ``winners`` of every block (in item order) into the old rows' lists, each row
    once, kept at most ``lists.shape[1]`` long."""
    if not found:
        return
    rows = np.concatenate([f[0] for f in found])
    order = np.argsort(rows, kind="stable")  # grouped by row, items still ascending
    ptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=len(length)))))
    items = np.concatenate([f[1] for f in found])[order]
    values = np.concatenate([f[2] for f in found])[order]
    cuts = np.linspace(0, len(length), default_workers() + 1).astype(np.int64)

    def part(a: int, b: int) -> None:  # rows a..b-1 on a thread (the kernel releases the GIL)
        merge_rows(ptr[a : b + 1], items, values, lists[a:b], vals[a:b], length[a:b])

    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        list(pool.map(part, cuts[:-1].tolist(), cuts[1:].tolist()))


@numba.njit(nogil=True, cache=True)
def merge_rows(ptr, items, values, lists, vals, length):  # pragma: no cover - compiled
    """Row r's candidates ``items[ptr[r]:ptr[r + 1]]`` (ascending) merged into its list.

    Candidates are sorted best first (insertion sort: a few per row; equal values keep index
    order); list entries not below the best candidate stay where they are; from there the two
    are merged, the listed item (smaller index) first on equal values."""
    width = lists.shape[1]
    most = 0
    for r in range(ptr.shape[0] - 1):
        most = max(most, ptr[r + 1] - ptr[r])
    cv = np.empty(most, dtype=np.float64)
    ci = np.empty(most, dtype=np.int64)
    mv = np.empty(width, dtype=np.float64)
    mi = np.empty(width, dtype=np.int32)
    for r in range(ptr.shape[0] - 1):
        m = 0
        for q in range(ptr[r], ptr[r + 1]):
            v = values[q]
            p = m
            while p > 0 and cv[p - 1] < v:
                cv[p] = cv[p - 1]
                ci[p] = ci[p - 1]
                p -= 1
            cv[p] = v
            ci[p] = items[q]
            m += 1
        if m == 0:
            continue
        size = length[r]
        a = 0
        lo, hi = 0, size  # the first listed entry below the best candidate (values descend)
        while lo < hi:
            mid = (lo + hi) // 2
            if vals[r, mid] >= cv[0]:
                lo = mid + 1
            else:
                hi = mid
        a = start = lo
        b = t = 0
        while start + t < width and (a < size or b < m):
            if b >= m or (a < size and vals[r, a] >= cv[b]):
                mv[t] = vals[r, a]
                mi[t] = lists[r, a]
                a += 1
            else:
                mv[t] = cv[b]
                mi[t] = ci[b]
                b += 1
            t += 1
        lists[r, start : start + t] = mi[:t]
        vals[r, start : start + t] = mv[:t]
        length[r] = start + t
