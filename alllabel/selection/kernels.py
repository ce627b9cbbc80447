"""Compiled inner loops (numba), for the parts numpy cannot do without N x N temporaries.

``add_postings``: out[r, :] += sum over the terms t of query row rows[r] of
count(t) * (weights of t in every document), walking each term's postings list. This is the
sparse half of a BM25 row block written straight into the dense block (scipy's sparse product
would build a CSR matrix of the same size first). All operands are integer-valued float64 and
every partial sum stays below 2**53, so the result is exact and independent of order.
"""

from __future__ import annotations

import os
import tempfile

# numba caches compiled code next to this file; an installed, read-only package (the Docker image
# runs as a non-root user) gets a cache folder under the temp dir instead of failing to import.
if not os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK):
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "alllabel-numba"))

import numba  # noqa: E402
import numpy as np  # noqa: E402


@numba.njit(nogil=True, cache=True)
def add_postings(
    q_ptr, q_idx, q_val, rows, w_ptr, w_doc, w_val, out
):  # pragma: no cover - compiled
    for r in range(rows.shape[0]):
        i = rows[r]
        o = out[r]
        for p in range(q_ptr[i], q_ptr[i + 1]):
            t = q_idx[p]
            c = q_val[p]
            for s in range(w_ptr[t], w_ptr[t + 1]):
                o[w_doc[s]] += c * w_val[s]


@numba.njit(inline="always")
def _worse(va, ia, vb, ib):  # pragma: no cover - compiled
    # Ranking order is U descending, index ascending: a ranks after b.
    return va < vb or (va == vb and ia > ib)


@numba.njit(inline="always")
def _sift_down(hv, hi, size, pos):  # pragma: no cover - compiled
    # hv/hi is a heap whose root is the worst entry.
    while True:
        c = 2 * pos + 1
        if c >= size:
            return
        if c + 1 < size and _worse(hv[c + 1], hi[c + 1], hv[c], hi[c]):
            c += 1
        if not _worse(hv[c], hi[c], hv[pos], hi[pos]):
            return
        hv[c], hv[pos] = hv[pos], hv[c]
        hi[c], hi[pos] = hi[pos], hi[c]
        pos = c


@numba.njit(nogil=True, cache=True)
def scan_rows(
    block, rows, excluded, grid, width, sentinel, lists, vals, rowsum
):  # pragma: no cover
    """One pass per row of a block of U: the row's top list and its sum on the integer grid.

    Cells j == rows[r] and excluded[j] are skipped. ``lists[r]`` gets the first ``width`` items
    in ranking order (padded with ``sentinel``), ``vals[r]`` their values; ``rowsum[r]`` = sum of rint(U * grid) as int64,
    exact whatever the order. Columns are visited in ascending order, so a candidate equal to
    the heap's worst entry has a larger index and is rejected by the strict comparison.
    """
    n = block.shape[1]
    hv = np.empty(max(width, 1), dtype=np.float64)
    hi = np.empty(max(width, 1), dtype=np.int64)
    for r in range(block.shape[0]):
        u = block[r]
        i = rows[r]
        acc = np.int64(0)
        size = 0
        for j in range(n):
            if j == i or excluded[j]:
                continue
            v = u[j]
            acc += np.int64(np.rint(v * grid))
            if size < width:
                hv[size] = v
                hi[size] = j
                size += 1
                if size == width:  # heapify once full
                    for p in range(width // 2 - 1, -1, -1):
                        _sift_down(hv, hi, width, p)
            elif v > hv[0]:
                hv[0] = v
                hi[0] = j
                _sift_down(hv, hi, width, 0)
        rowsum[r] = acc
        out = lists[r]
        for p in range(size, width):
            out[p] = sentinel
        if size < width:  # never heapified: do it now, then drain worst-first
            for p in range(size // 2 - 1, -1, -1):
                _sift_down(hv, hi, size, p)
        while size > 0:
            out[size - 1] = hi[0]
            vals[r, size - 1] = hv[0]
            size -= 1
            hv[0] = hv[size]
            hi[0] = hi[size]
            _sift_down(hv, hi, size, 0)


@numba.njit(nogil=True, cache=True)
def sumrank_add(
    lists, cand, depth, weight, sums, members, out_items, out_ranks
):  # pragma: no cover
    """Rule (2) over a block of top lists: each row's first ``depth`` candidates, in order.

    ``sums[item] += weight[rank]`` in row-major order, the order ``np.bincount`` would add them,
    so the float sums are the same bits. Entries whose item is in ``members`` are also written
    to ``out_items``/``out_ranks`` (for exact near-tie sums); returns how many.
    """
    m = 0
    for r in range(lists.shape[0]):
        rank = 0
        for p in range(lists.shape[1]):
            item = lists[r, p]
            if not cand[item]:
                continue
            rank += 1
            if rank > depth:
                break
            sums[item] += weight[rank]
            if members[item]:
                out_items[m] = item
                out_ranks[m] = rank
                m += 1
    return m
