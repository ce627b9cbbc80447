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
    block, rows, excluded, grid, width, sentinel, lists, vals, rowsum, rowmax, normalise
):  # pragma: no cover
    """One pass per row of a block of U: the row's top list and its sum on the integer grid.

    Cells j == rows[r] and excluded[j] are skipped. ``lists[r]`` gets the first ``width`` items
    in ranking order (padded with ``sentinel``), ``vals[r]`` their values; ``rowsum[r]`` = sum of rint(U * grid) as int64,
    exact whatever the order. Columns are visited in ascending order, so a candidate equal to
    the heap's worst entry has a larger index and is rejected by the strict comparison.
    ``normalise``: ``block`` holds raw BM25 scores; U = max(raw, 0) / (row max over j != i, or
    inf when that is <= 0) - the float operations of ``BM25Similarity._normalise`` - and
    ``rowmax[r]`` gets the row max, saving the separate max and divide passes over the block.
    """
    n = block.shape[1]
    hv = np.empty(max(width, 1), dtype=np.float64)
    hi = np.empty(max(width, 1), dtype=np.int64)
    for r in range(block.shape[0]):
        u = block[r]
        i = rows[r]
        div = 1.0
        if normalise:
            top = -np.inf if n > 1 else 0.0
            for j in range(n):
                if j != i and u[j] > top:
                    top = u[j]
            rowmax[r] = top
            div = top if top > 0 else np.inf
        acc = np.int64(0)
        size = 0
        for j in range(n):
            if j == i or excluded[j]:
                continue
            v = max(u[j], 0.0) / div if normalise else u[j]
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
def merge_columns(block, rows, cols, lists, vals, length, complete):  # pragma: no cover
    """Merge new columns ``cols`` (ascending, all after every listed item) into top lists.

    ``block[r, c]`` = U[rows[r], cols[c]]. A row's list is a prefix of its ranking of
    ``length`` items (the whole ranking when ``complete[r]``); a new item enters when it ranks
    before the list's last item (strictly greater value: equal values go to the older, smaller
    index), or anywhere while a complete list has room. Lists stay at most ``lists.shape[1]``.
    """
    width = lists.shape[1]
    cv = np.empty(block.shape[1], dtype=np.float64)
    ci = np.empty(block.shape[1], dtype=np.int64)
    mv = np.empty(width, dtype=np.float64)
    mi = np.empty(width, dtype=np.int32)
    for r in range(block.shape[0]):
        i = rows[r]
        size = length[i]
        open_end = complete[r] and size < width
        if size == 0 and not open_end:
            continue
        thr = vals[i, size - 1] if size > 0 else -np.inf
        m = 0
        for c in range(block.shape[1]):  # accepted candidates, insertion-sorted best first
            v = block[r, c]
            if open_end or v > thr:
                p = m
                while p > 0 and cv[p - 1] < v:  # equal values keep column (index) order
                    cv[p] = cv[p - 1]
                    ci[p] = ci[p - 1]
                    p -= 1
                cv[p] = v
                ci[p] = cols[c]
                m += 1
        if m == 0:
            continue
        a = b = t = 0
        while t < width and (a < size or b < m):
            if b >= m or (a < size and vals[i, a] >= cv[b]):  # old index is smaller on ties
                mv[t] = vals[i, a]
                mi[t] = lists[i, a]
                a += 1
            else:
                mv[t] = cv[b]
                mi[t] = ci[b]
                b += 1
            t += 1
        lists[i, :t] = mi[:t]
        vals[i, :t] = mv[:t]
        length[i] = t


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
