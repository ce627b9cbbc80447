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


@numba.njit(nogil=True)
def _compact(bv, bi, m, width):  # pragma: no cover - compiled
    """Keep the best ``width`` of the ``m`` buffered candidates (appended in index order), in
    index order; returns the value of the width-th best (the new acceptance threshold)."""
    kth = np.partition(bv[:m], m - width)[m - width]  # the width-th largest value
    above = 0
    for p in range(m):
        if bv[p] > kth:
            above += 1
    ties = width - above  # candidates equal to kth that stay: the smallest indices
    t = 0
    for p in range(m):
        v = bv[p]
        if v > kth or (v == kth and ties > 0):
            if v == kth:
                ties -= 1
            bv[t] = v
            bi[t] = bi[p]
            t += 1
    return kth


@numba.njit(nogil=True)
def _guess(u, width, buf):  # pragma: no cover - compiled
    """A threshold below the width-th best value with high probability: from every 16th item,
    the value that ~1.5 x width items of the row would exceed (-inf: no useful guess)."""
    stride = min(16, width // 32)
    if stride < 2:
        return -np.inf
    ns = 0
    for j in range(0, u.shape[0], stride):
        if ns < buf.shape[0]:
            buf[ns] = u[j]
            ns += 1
    k = (3 * width) // (2 * stride)
    if k >= ns:
        return -np.inf
    return np.partition(buf[:ns], ns - k)[ns - k]


@numba.njit(nogil=True)
def _filter(u, width, thr, bv, bi):  # pragma: no cover - compiled
    """Buffer the row's items above ``thr`` in index order, compacted to the best ``width``
    whenever the buffer fills (which raises ``thr``); returns how many are buffered."""
    m = 0
    cap = bv.shape[0]
    for j in range(u.shape[0]):
        if u[j] > thr:
            bv[m] = u[j]
            bi[m] = j
            m += 1
            if m == cap:
                thr = _compact(bv, bi, m, width)
                m = width
    return m


@numba.njit(nogil=True)
def _row_to_u(u, i, excluded, grid, normalise, rowmax, r):  # pragma: no cover - compiled
    """Turn row ``u`` into U in place (BM25's raw scores normalised when ``normalise``) and
    return its grid sum over j != i, j not excluded; then mark those cells -inf (unrankable).

    Plain loops over the whole row (SIMD), the self cell zeroed and excluded cells subtracted
    after, as the numpy version did."""
    n = u.shape[0]
    div = 1.0
    if normalise:
        u[i] = -np.inf
        top = -np.inf if n > 1 else 0.0
        for j in range(n):
            top = max(top, u[j])
        rowmax[r] = top
        div = top if top > 0 else np.inf
    u[i] = 0.0
    acc = np.int64(0)
    if normalise:
        for j in range(n):
            v = max(u[j], 0.0) / div
            u[j] = v
            acc += np.int64(np.rint(v * grid))
    else:
        for j in range(n):
            acc += np.int64(np.rint(u[j] * grid))
    for j in excluded:
        acc -= np.int64(np.rint(u[j] * grid))
        u[j] = -np.inf
    u[i] = -np.inf
    return acc


@numba.njit(nogil=True)
def _top_list(u, width, sentinel, bv, bi, lists_r, vals_r):  # pragma: no cover - compiled
    """The first ``width`` items of row ``u``'s ranking (unrankable cells are -inf)."""
    m = 0
    if width > 0:
        guess = _guess(u, width, bv)
        m = _filter(u, width, guess, bv, bi)
        if m < width and guess > -np.inf:  # the guess was too high: filter again, exactly
            m = _filter(u, width, -np.inf, bv, bi)
    if m > width:
        _compact(bv, bi, m, width)
        m = width
    order = np.argsort(-bv[:m], kind="mergesort")  # stable: equal values in index order
    for p in range(m):
        lists_r[p] = bi[order[p]]
        vals_r[p] = bv[order[p]]
    for p in range(m, width):
        lists_r[p] = sentinel


@numba.njit(nogil=True, cache=True)
def scan_rows(
    block, rows, excluded, grid, width, sentinel, lists, vals, rowsum, rowmax, normalise
):  # pragma: no cover
    """One pass per row of a block of U: the row's top list and its sum on the integer grid.

    Cells j == rows[r] and j in ``excluded`` (indices) are skipped. ``lists[r]`` gets the first
    ``width`` items in ranking order (padded with ``sentinel``), ``vals[r]`` their values;
    ``rowsum[r]`` = sum of rint(U * grid) as int64, exact whatever the order. The block is
    overwritten. Candidates above a threshold are buffered in index order; a full buffer keeps
    its best ``width`` (a selection, not a sort) and raises the threshold to the width-th best
    value. A later item equal to it has a larger index, so it ranks after all kept ones: the
    strict comparison is exact. The first threshold is guessed from a sample; if fewer than
    ``width`` items exceed it, the row is filtered again from -inf.
    ``normalise``: ``block`` holds raw BM25 scores; U = max(raw, 0) / (row max over j != i, or
    inf when that is <= 0) - the float operations of ``BM25Similarity._normalise`` - and
    ``rowmax[r]`` gets the row max, saving the separate max and divide passes over the block.
    """
    cap = max(4 * width, 256)
    bv = np.empty(cap, dtype=np.float64)
    bi = np.empty(cap, dtype=np.int64)
    for r in range(block.shape[0]):
        u = block[r]
        rowsum[r] = _row_to_u(u, rows[r], excluded, grid, normalise, rowmax, r)
        _top_list(u, width, sentinel, bv, bi, lists[r], vals[r])


@numba.njit(nogil=True)
def _rank_row(u, i, excluded, width, sentinel, bv, bi, lists_r, vals_r, rowmax, r, raw):
    # pragma: no cover - compiled
    u[i] = -np.inf
    if raw:
        top = -np.inf if u.shape[0] > 1 else 0.0
        for j in range(u.shape[0]):
            top = max(top, u[j])
        rowmax[r] = top
    for j in excluded:
        u[j] = -np.inf
    _top_list(u, width, sentinel, bv, bi, lists_r, vals_r)


@numba.njit(nogil=True, cache=True)
def rank_rows(block, rows, excluded, width, sentinel, lists, vals, rowmax, raw):  # pragma: no cover
    """``scan_rows`` without the grid sums and without turning the rows into U.

    For a backend whose U is a strictly increasing function of its raw scores on each row
    (BM25 with non-negative weights: U = raw / row max, and distinct integers below 2**52 stay
    distinct after the division; SBERT: a power-of-two scale), ranking the raw row is ranking
    U's row, ties included. ``raw``: also record the row max over j != i (every column, as
    ``BM25Similarity.rows`` does). ``vals`` get the raw values. Saves the divide and rint of
    every cell: the sums are only needed for the seed (``Engine.seed``, from linear sums).
    """
    cap = max(4 * width, 256)
    bv = np.empty(cap, dtype=np.float64)
    bi = np.empty(cap, dtype=np.int64)
    for r in range(block.shape[0]):
        _rank_row(
            block[r], rows[r], excluded, width, sentinel, bv, bi, lists[r], vals[r], rowmax, r, raw
        )


@numba.njit(nogil=True, cache=True)
def postings_rank_rows(
    q_ptr,
    q_idx,
    q_val,
    w_ptr,
    w_doc,
    w_val,
    block,
    rows,
    excluded,
    width,
    sentinel,
    lists,
    vals,
    rowmax,
):  # pragma: no cover - compiled
    """``add_postings`` then ``rank_rows`` (raw), row by row: each row is ranked while it is
    still in cache from its postings, instead of a second pass over the whole block."""
    cap = max(4 * width, 256)
    bv = np.empty(cap, dtype=np.float64)
    bi = np.empty(cap, dtype=np.int64)
    for r in range(block.shape[0]):
        u = block[r]
        i = rows[r]
        for p in range(q_ptr[i], q_ptr[i + 1]):
            t = q_idx[p]
            c = q_val[p]
            for s in range(w_ptr[t], w_ptr[t + 1]):
                u[w_doc[s]] += c * w_val[s]
        _rank_row(u, i, excluded, width, sentinel, bv, bi, lists[r], vals[r], rowmax, r, True)


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
