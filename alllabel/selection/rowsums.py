"""The core-set seed without summing every cell: row sums of U by linearity, exact where it counts.

The seed is argmin_i sum_{j != i, j rankable} rint(U[i, j] * grid) (``stages``). Both text
backends score by a dot product of a query-side and a document-side vector, and U is that dot
product divided by one number per row (BM25: the row max; SBERT: 2**40), so

    sum_j raw(i, j) = <query_i, sum_j doc_j>       (O(nnz) for all rows, not O(N^2))

gives each row's grid sum up to 0.5 per cell (rint) plus float rounding, bounded below. Only
rows whose interval reaches the smallest upper end can be the seed; their exact grid sums are
computed from their rows of U, so the seed is the one the full per-cell sum gives.
"""

from __future__ import annotations

import numba
import numpy as np

from alllabel.selection.kernels import scan_rows
from alllabel.selection.similarity import BM25Similarity, SBERTSimilarity, default_block_rows


def _bm25_sums(sim: BM25Similarity, excluded: np.ndarray):
    """Raw sums over j != i, j not excluded, a bound on the sum of |raw|, and each row's divisor."""
    wd, ws = sim._wd, sim._ws_csc  # documents x dense terms; rare terms x documents
    col_d = wd.sum(axis=0) - wd[excluded].sum(axis=0)
    col_s = np.asarray(ws.sum(axis=1)).ravel() - np.asarray(ws[:, excluded].sum(axis=1)).ravel()
    total = sim._qd @ col_d + sim._qs @ col_s
    self_raw = (sim._qd * wd).sum(axis=1) + np.asarray(sim._qs.multiply(ws.T).sum(axis=1)).ravel()
    in_ex = np.zeros(sim.n, dtype=bool)
    in_ex[excluded] = True
    total -= np.where(in_ex, 0.0, self_raw)  # an excluded row's own cell is already out
    div = sim._rowmax.copy()
    return total, total, np.where(div > 0, div, np.inf)  # weights >= 0: |raw| = raw


def _sbert_sums(sim: SBERTSimilarity, excluded: np.ndarray):
    e = sim._e
    col = e.sum(axis=0) - e[excluded].sum(axis=0)
    in_ex = np.zeros(sim.n, dtype=bool)
    in_ex[excluded] = True
    total, bound = _dot_sums(e, col, in_ex)
    return total, bound, np.full(sim.n, sim.QUANT * sim.QUANT)


@numba.njit(nogil=True, cache=True)
def _dot_sums(e, col, in_ex):  # pragma: no cover - compiled
    """Per row: e_i . col, less e_i . e_i unless excluded, and |e_i| . sum_j |e_j|: two passes
    over ``e`` on one thread (numpy's five passes, an N x d temporary and BLAS threads took
    0.5-0.9 CPU-s at 100k, this 0.15: a fifth of an incremental re-plan's selection)."""
    n, d = e.shape
    abs_col = np.zeros(d)
    for i in range(n):
        for k in range(d):
            abs_col[k] += abs(e[i, k])
    total = np.empty(n)
    bound = np.empty(n)
    for i in range(n):
        t = b = own = 0.0
        for k in range(d):
            v = e[i, k]
            t += v * col[k]
            b += abs(v) * abs_col[k]
            own += v * v
        total[i] = t if in_ex[i] else t - own
        bound[i] = b
    return total, bound


def linear_sums_available(sim) -> bool:
    """Whether ``seed`` can work from linear sums (else the scan sums every cell)."""
    if isinstance(sim, BM25Similarity):
        return sim.rank_raw
    return isinstance(sim, SBERTSimilarity)


def approx_grid_sums(sim, excluded: np.ndarray, grid: float) -> tuple[np.ndarray, np.ndarray]:
    """Every row's grid sum from linear sums, and a bound on its distance to the exact one."""
    fn = _bm25_sums if isinstance(sim, BM25Similarity) else _sbert_sums
    total, bound, div = fn(sim, excluded)
    approx = total / div * grid
    cells = sim.n - 1 - len(excluded)
    # rint moves each cell by <= 0.5; the float sums above err by far less than this relative
    # bound (about N * 2**-53 of the sum of |raw|), and so do the divisions of the cells.
    tol = 0.5 * cells + 2.0 + (1e-9 + sim.n * 2.0**-50) * bound / div * grid
    return approx, tol


def seed(sim, allowed: np.ndarray, excluded: np.ndarray, grid: float) -> int:
    """argmin over ``allowed`` rows of the exact grid row sum; ties to the smaller index.

    ``sim``'s row maxima must be known (the scan records them)."""
    approx, tol = approx_grid_sums(sim, excluded, grid)
    cand = np.flatnonzero(allowed)
    lo = (approx[cand] + tol[cand]).min()
    rows = cand[approx[cand] - tol[cand] <= lo]  # every row that can have the smallest sum
    sums = exact_grid_sums(sim, rows, excluded, grid)
    return int(rows[np.lexsort((rows, sums))[0]])


def exact_grid_sums(sim, rows: np.ndarray, excluded: np.ndarray, grid: float) -> np.ndarray:
    """The grid sums the full scan computes, for ``rows`` only (their rows of U)."""
    n = sim.n
    out = np.empty(len(rows), dtype=np.int64)
    step = default_block_rows(n)
    for s in range(0, len(rows), step):
        idx = rows[s : s + step]
        block = sim.rows(idx)
        sink = (np.empty((len(idx), 0), np.int32), np.empty((len(idx), 0)))
        scan_rows(
            block,
            idx,
            excluded,
            grid,
            0,
            n,
            *sink,
            out[s : s + len(idx)],
            np.empty(len(idx)),
            False,
        )
    return out
