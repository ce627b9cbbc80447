"""BM25 top lists from float32 rows, exact: approximate every cell, score the band exactly.

The scan needs, per query row, the first ``width`` items of its ranking by the exact raw BM25
score (integer-valued float64, ties to the smaller index) and the row max. Computing every cell
in float64 costs twice the float32 BLAS and twice the memory traffic, yet only ~1 % of a row's
cells ever matter. So each row is computed in float32 (``sgemm`` for the frequent terms, the
postings for the rest) with a proven relative error bound, and only the cells that can rank
within ``width`` by that bound are kept, and those the bound cannot order are scored exactly:

* all weights are >= 0 (``BM25Similarity.rank_raw``), so a cell is a sum of m non-negative
  products, m = the query's distinct terms. Each float32 weight, product and addition rounds
  by at most u = 2**-24 relative: each product carries at most 2 roundings and a sum of m
  non-negative terms, in any order (BLAS blocking, FMA), m - 1 more on any one term, so the
  result is within (1 +/- eps) of the exact value with eps = gamma_{m+1} = (m+1)u / (1-(m+1)u)
  < (m + 4) u. Adding a zero product is exact, so the dense part's zero terms do not count.
* let a_w be the width-th best float32 value of the row. At least ``width`` items have an
  exact score >= a_w / (1 + eps), so the exact width-th best theta is >= that; an item with
  float32 value v < a_w (1 - eps) / (1 + eps) has an exact score < theta: it cannot enter the
  list, not even on a tie. Every other item is kept (the band: the top ``width`` and
  near-ties) and sorted by float32 value. Two neighbours whose intervals [v/(1+eps),
  v/(1-eps)] are disjoint are in their exact order; only runs of overlapping neighbours that
  reach into the first ``width`` places are scored exactly (float64, from each document's
  forward index) and re-sorted: at 100k about 70 of a row's 801 items.
* the row max (over every j != i, excluded items too) is the best exact score among the items
  whose float32 value reaches the row's float32 max times the same factor.

A row whose band would not fit the buffer (mass ties, e.g. a row of zeros) is reported failed
and recomputed by the float64 path (``engine._rank_raw``), so the result never depends on the
approximation: the lists and maxima are bit for bit those of the float64 scan.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import scipy.sparse as sp

U32 = 2.0**-24  # float32's unit roundoff
_BUILD = threading.Lock()


def approx_operands(sim) -> tuple[np.ndarray, ...]:
    """float32 copies of the dense and the postings' weights, and the forward index (float64),
    kept on ``sim``; the counts are small integers, exact in float32 as they are."""
    ops = getattr(sim, "_approx", None)
    if ops is not None:
        return ops
    with _BUILD:  # once, not once per scan thread (~150 MB at 100k)
        ops = getattr(sim, "_approx", None)
        if ops is not None:
            return ops
        # Each document's terms with their float64 weights in one run (dense terms first, then
        # the rare ones shifted by their count): an exact score reads ~1 KB in a row.
        fw = sp.hstack([sp.csr_matrix(sim._wd), sim._ws_csc.T], format="csr")
        ops = (
            np.ascontiguousarray(sim._wd.astype(np.float32)),
            sim._ws_t.data.astype(np.float32),
            (fw.indptr, fw.indices, fw.data),
        )
        sim._approx = ops
    return ops


def dense_rows32(sim, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    wd32 = approx_operands(sim)[0]
    return np.matmul(sim._qd[idx].astype(np.float32), wd32.T, out=out)


def band_rank(sim, block, idx, excluded, width, sentinel, lists, rowmax) -> np.ndarray:
    """Top lists and row maxima of rows ``idx`` from ``block`` (their float32 dense part,
    ``dense_rows32``; overwritten); returns the positions of the rows left undone."""
    _, ws32, forward = approx_operands(sim)
    q, w = sim._qs, sim._ws_t
    post = (q.indptr, q.indices, q.data, w.indptr, w.indices, ws32)
    exact = (sim._qd, q.indptr, q.indices, q.data) + forward
    failed = np.empty(len(idx), dtype=np.int64)
    nf = band_rank_rows(block, idx, excluded, width, sentinel, lists, rowmax, post, exact, failed)
    return failed[:nf]


CHUNK = 32  # cells tested at once (a vectorised OR) before any is looked at one by one


@numba.njit(nogil=True)
def _band(u, width, thr, shrink, bv, bi):  # pragma: no cover - compiled
    """Items of ``u`` >= thr (>= 0: never the -inf cells) in index order; a full buffer keeps
    those within the band of its width-th best (which raises thr). Returns (count, thr);
    count -1: no room. Most chunks hold no such item and cost one vectorised pass."""
    m = 0
    cap = bv.shape[0]
    n = u.shape[0]
    t32 = _below32(thr)
    for c in range(0, n, CHUNK):
        end = min(c + CHUNK, n)
        hit = False
        for j in range(c, end):
            hit |= u[j] >= t32
        if not hit:
            continue
        for j in range(c, end):
            v = u[j]
            if v >= t32:
                bv[m] = v
                bi[m] = j
                m += 1
                if m == cap:
                    m, thr = _narrow(bv, bi, m, width, shrink)
                    t32 = _below32(thr)
                    if m > cap // 2:
                        return -1, thr
    return m, thr


@numba.njit(nogil=True)
def _below32(x):  # pragma: no cover - compiled
    """The largest float32 <= x: comparing float32 cells with it keeps every cell >= x (a few
    more at most, which the exact order then places), and the compare loop vectorises."""
    y = np.float32(x)
    return np.nextafter(y, np.float32(-np.inf)) if y > x else y


@numba.njit(nogil=True)
def _guess(u, width, buf):  # pragma: no cover - compiled
    """A threshold that about 1.5 x width cells exceed, from every 64th cell (every 4th cache
    line); 0 when the list is too short for a sample to say."""
    stride = min(64, width // 8)
    if stride < 2:
        return 0.0
    ns = 0
    for j in range(0, u.shape[0], stride):
        if ns < buf.shape[0]:
            buf[ns] = u[j]
            ns += 1
    k = (3 * width) // (2 * stride)
    if k >= ns:
        return 0.0
    return max(np.partition(buf[:ns], ns - k)[ns - k], 0.0)


@numba.njit(nogil=True)
def _narrow(bv, bi, m, width, shrink):  # pragma: no cover - compiled
    """Keep the buffered items >= (width-th best) * shrink, in index order."""
    thr = np.partition(bv[:m], m - width)[m - width] * shrink
    t = 0
    for p in range(m):
        if bv[p] >= thr:
            bv[t] = bv[p]
            bi[t] = bi[p]
            t += 1
    return t, thr


@numba.njit(nogil=True)
def _exact(j, qc, fw_ptr, fw_idx, fw_val):  # pragma: no cover - compiled
    """The float64 raw score of the query in ``qc`` against document j: integer-valued
    operands, so exact in any order."""
    s = 0.0
    for p in range(fw_ptr[j], fw_ptr[j + 1]):
        s += qc[fw_idx[p]] * fw_val[p]
    return s


@numba.njit(nogil=True)
def _row_band(u, i, excluded, exv, width, bv, bi, shrink):  # pragma: no cover - compiled
    """The band of row ``u`` (float32 values of the rankable items) in bv/bi, in index order;
    the excluded items' values go to ``exv``. Returns its size, -1 when it does not fit."""
    u[i] = -np.inf
    for e in range(excluded.shape[0]):
        exv[e] = u[excluded[e]]
        u[excluded[e]] = -np.inf
    if width == 0:
        return -1
    guess = _guess(u, width, bv)
    m, thr = _band(u, width, guess, shrink, bv, bi)
    if 0 <= m < width and guess > 0.0:  # the guess was too high: everything >= 0 (all ranked)
        m, thr = _band(u, width, 0.0, shrink, bv, bi)
    if m >= width:  # the buffer holds the top `width` and every item >= thr
        m, band = _narrow(bv, bi, m, width, shrink)
        if band < thr:  # items between the band's edge and thr were skipped: filter again
            m, thr = _band(u, width, band, shrink, bv, bi)
            if m >= width:
                m, band = _narrow(bv, bi, m, width, shrink)
    return m


@numba.njit(nogil=True)
def _sort_band(bv, bi, m, keys, items, score):  # pragma: no cover - compiled
    """items/score = the band by float32 value descending, index ascending: one int64 sort of
    (value bits, inverted index) keys; a float32 >= 0 orders as its bit pattern."""
    bits = bv[:m].view(np.int32)
    for p in range(m):
        keys[p] = (np.int64(bits[p]) << 32) | (0xFFFFFFFF - bi[p])
    srt = np.sort(keys[:m])
    hi = np.empty(m, dtype=np.int32)
    for p in range(m):
        k = srt[m - 1 - p]
        items[p] = 0xFFFFFFFF - (k & 0xFFFFFFFF)
        hi[p] = np.int32(k >> 32)
    val = hi.view(np.float32)
    for p in range(m):
        score[p] = val[p]


@numba.njit(nogil=True)
def _resolve(items, score, lo, hi):  # pragma: no cover - compiled
    """Sort items[lo:hi] by exact score descending, index ascending (insertion: groups are
    small)."""
    for p in range(lo + 1, hi):
        it, sc = items[p], score[p]
        q = p
        while q > lo and (score[q - 1] < sc or (score[q - 1] == sc and items[q - 1] > it)):
            items[q], score[q] = items[q - 1], score[q - 1]
            q -= 1
        items[q], score[q] = it, sc


@numba.njit(nogil=True)
def _add_rare(u, i, post, qd):  # pragma: no cover - compiled
    """Add row ``i``'s rare-term float32 postings to ``u`` (its dense part); returns the row's
    dense terms (nonzero) and relative error bound eps = (m + 4) u, m = its distinct terms
    (module docstring)."""
    q_ptr, q_idx, q_val, w_ptr, w_doc, w_val = post
    for p in range(q_ptr[i], q_ptr[i + 1]):
        c = q_val[p]
        for s in range(w_ptr[q_idx[p]], w_ptr[q_idx[p] + 1]):
            u[w_doc[s]] += c * w_val[s]
    dense_nz = np.flatnonzero(qd[i])
    return dense_nz, (len(dense_nz) + q_ptr[i + 1] - q_ptr[i] + 4) * U32


@numba.njit(nogil=True)
def _query_counts(qc, i, dense_nz, exact, on):  # pragma: no cover - compiled
    """Row ``i``'s float64 term counts written into ``qc`` (``on``), or cleared again: the query
    side of ``_exact``'s product with a document's forward index."""
    qd, qs_ptr, qs_idx, qs_val = exact[0], exact[1], exact[2], exact[3]
    nd = qd.shape[1]  # the rare terms follow the dense ones
    for t in dense_nz:
        qc[t] = qd[i, t] if on else 0.0
    for p in range(qs_ptr[i], qs_ptr[i + 1]):
        qc[nd + qs_idx[p]] = qs_val[p] if on else 0.0


@numba.njit(nogil=True, cache=True)
def band_rank_rows(
    block, rows, excluded, width, sentinel, lists, rowmax, post, exact, failed
):  # pragma: no cover - compiled
    """Add the rare terms' float32 postings to ``block`` (the dense part, float32), then rank
    each row through its band (module docstring). Sorted by float32 value, two neighbours
    whose error intervals overlap are linked; only linked groups that reach into the first
    ``width`` places, and the items that can be the row max, are scored exactly.
    ``post`` = (query ptr, terms, counts, term ptr, documents, float32 weights);
    ``exact`` = (float64 dense counts, query ptr, rare terms, float64 counts, and the
    forward index: document ptr, terms, float64 weights). Rows that fail go to ``failed``
    (positions in the block); returns how many."""
    q_ptr, q_idx, q_val, w_ptr, w_doc, w_val = post
    qd, qs_ptr, qs_idx, qs_val, fw_ptr, fw_idx, fw_val = exact
    nd = qd.shape[1]  # the rare terms follow the dense ones in the forward index
    cap = max(8 * width, 4096)
    bv = np.empty(cap, dtype=np.float32)
    keys = np.empty(cap, dtype=np.int64)
    bi = np.empty(cap, dtype=np.int64)
    items = np.empty(cap, dtype=np.int64)
    score = np.empty(cap, dtype=np.float64)
    exv = np.empty(excluded.shape[0], dtype=np.float32)
    qc = np.zeros(nd + w_ptr.shape[0] - 1, dtype=np.float64)
    nf = 0
    for r in range(block.shape[0]):
        u = block[r]
        i = rows[r]
        dense_nz, eps = _add_rare(u, i, post, qd)
        shrink = (1.0 - eps) / (1.0 + eps)
        m = _row_band(u, i, excluded, exv, width, bv, bi, shrink)
        if m < 0 or eps > 1e-3:
            failed[nf] = r
            nf += 1
            continue
        _query_counts(qc, i, dense_nz, exact, True)
        _sort_band(bv, bi, m, keys, items, score)
        # The row max: the best exact score among the items that can hold it.
        top = score[0] if m > 0 else -np.inf
        for e in range(excluded.shape[0]):
            top = max(top, exv[e])
        best = -np.inf if u.shape[0] > 1 else 0.0
        for p in range(m):
            if score[p] < top * shrink:
                break
            best = max(best, _exact(items[p], qc, fw_ptr, fw_idx, fw_val))
        for e in range(excluded.shape[0]):
            if exv[e] >= top * shrink:
                j = excluded[e]
                best = max(best, _exact(j, qc, fw_ptr, fw_idx, fw_val))
        rowmax[r] = best
        lo = 0
        while lo < min(m, width):  # linked groups in the first `width` places: exact order
            hi = lo + 1
            while hi < m and score[hi] >= score[hi - 1] * shrink:
                hi += 1
            if hi - lo > 1:
                for p in range(lo, hi):
                    score[p] = _exact(items[p], qc, fw_ptr, fw_idx, fw_val)
                _resolve(items, score, lo, hi)
            lo = hi
        _query_counts(qc, i, dense_nz, exact, False)
        for p in range(width):
            lists[r, p] = items[p] if p < m else sentinel
    return nf


def band_depths(sim, block, idx, excluded, d1) -> tuple[np.ndarray, np.ndarray]:
    """Exact uncertainty depths of rows ``idx`` (``engine._exact_depths`` on raw rows) from
    ``block`` (their float32 dense part; overwritten); ``d1``: the D1 items, ascending.
    Returns (depths, positions of the rows left undone)."""
    _, ws32, forward = approx_operands(sim)
    q, w = sim._qs, sim._ws_t
    post = (q.indptr, q.indices, q.data, w.indptr, w.indices, ws32)
    exact = (sim._qd, q.indptr, q.indices, q.data) + forward
    depth = np.empty(len(idx), dtype=np.int64)
    failed = np.empty(len(idx), dtype=np.int64)
    nf = band_depth_rows(block, idx, excluded, d1, post, exact, depth, failed)
    return depth, failed[:nf]


@numba.njit(nogil=True, cache=True)
def band_depth_rows(block, rows, excluded, d1, post, exact, depth, failed):  # pragma: no cover
    """depth = 1 + the items ranking before the row's best D1 item (higher exact score, or the
    same and a smaller index). The best D1 item is found exactly among the D1 items whose
    float32 value can hold the max; then a cell above b (1 + eps) is surely before it, one
    below b (1 - eps) surely after, and only the cells between are scored exactly."""
    q_ptr, q_idx, q_val, w_ptr, w_doc, w_val = post
    qd, qs_ptr, qs_idx, qs_val, fw_ptr, fw_idx, fw_val = exact
    nd = qd.shape[1]
    qc = np.zeros(nd + w_ptr.shape[0] - 1, dtype=np.float64)
    nf = 0
    for r in range(block.shape[0]):
        u = block[r]
        i = rows[r]
        dense_nz, eps = _add_rare(u, i, post, qd)
        u[i] = -np.inf
        for j in excluded:
            u[j] = -np.inf
        top = -np.inf
        for j in d1:
            top = max(top, u[j])
        if top == -np.inf or eps > 1e-3:  # no D1 item but the row's own: the float64 way
            failed[nf] = r
            nf += 1
            continue
        _query_counts(qc, i, dense_nz, exact, True)
        b = -np.inf
        jb = u.shape[0]
        for j in d1:  # ascending: on equal exact scores the first stays
            if u[j] >= top * (1.0 - eps) / (1.0 + eps):
                s = _exact(j, qc, fw_ptr, fw_idx, fw_val)
                if s > b:
                    b, jb = s, j
        hi = b * (1.0 + eps)
        lo = b * (1.0 - eps)
        above = 0
        for j in range(u.shape[0]):
            above += np.float64(u[j]) > hi
        for c in range(0, u.shape[0], CHUNK):
            end = min(c + CHUNK, u.shape[0])
            hit = False
            for j in range(c, end):
                hit |= (np.float64(u[j]) >= lo) & (np.float64(u[j]) <= hi)
            if not hit:
                continue
            for j in range(c, end):
                v = np.float64(u[j])
                if lo <= v <= hi:
                    s = _exact(j, qc, fw_ptr, fw_idx, fw_val)
                    above += s > b or (s == b and j < jb)
        _query_counts(qc, i, dense_nz, exact, False)
        depth[r] = above + 1
    return nf
