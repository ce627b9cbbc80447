"""The scan behind ALLabel's stages: U's rows in blocks, top lists, row sums, depths, exact ties.

``stages.py`` states the selection's rules; this module computes what they need without ever
holding U: rows come in blocks (``Similarity.block``), on threads or a Dask cluster (``blocks``),
and every quantity that decides a pick is exact (integer grids, ``Fraction`` for near-ties), so
the result does not depend on the block size or the runner.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from alllabel.selection.bandrank import band_depths, band_rank, dense_rows32
from alllabel.selection.blocks import BlockRunner
from alllabel.selection.kernels import postings_rank_rows, rank_rows, scan_rows, sumrank_add
from alllabel.selection.rowsums import linear_sums_available, seed
from alllabel.selection.similarity import BM25Similarity, Similarity, default_block_rows

log = logging.getLogger(__name__)

BUFFERS = threading.local()
MEMO_ENTRIES = 2**25  # recomputed list entries kept while one stage runs (128 MiB)
AHEAD = 16  # diversity: columns computed per pass over the data (the pick and 15 likely next)


def _buffer(name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A per-thread scratch array, reused across blocks (fresh N-wide temporaries per block cost
    page faults: about a fifth of the scan's CPU time was system time)."""
    buf = getattr(BUFFERS, name, None)
    if buf is None or buf.shape[1] != shape[1] or buf.shape[0] < shape[0] or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        setattr(BUFFERS, name, buf)
    return buf[: shape[0]]


def _mask_block(block: np.ndarray, idx: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """The row itself and the excluded items can never be ranked: -inf."""
    block[np.arange(len(idx)), idx] = -np.inf
    if len(excluded):
        block[:, excluded] = -np.inf
    return block


def _row_max_of(sim, idx: np.ndarray):
    rowmax = getattr(sim, "_rowmax", None)
    return None if rowmax is None else rowmax[idx].copy()


# Block functions: module level, so a Dask worker can run them on its copy of the similarity.
def _scan_block(sim, idx, width, sentinel, excluded, grid):
    """Top lists and row sums of a block in one pass over its rows (kernels.scan_rows).

    Row sums are on an int64 fixed-point grid: exact, so independent of summation order and of
    the block size (mathematically tied means stay tied). Excluded items do not count.
    A backend that normalises rows by their max (BM25) hands over raw rows: the kernel
    normalises them on the way, with the same float operations.
    ``grid`` None: no sums, and a backend whose raw rows rank as U (``rank_raw``) is ranked
    raw (kernels.rank_rows); the seed then comes from linear sums (rowsums.seed)."""
    lists = np.empty((len(idx), width), dtype=np.int32)
    vals = _buffer("vals", (len(idx), width), np.float64)
    rowmax = np.empty(len(idx))
    fused = getattr(sim, "fused_rows", False)
    if grid is None and getattr(sim, "rank_raw", False):
        _rank_raw(sim, idx, excluded, width, sentinel, lists, vals, rowmax, fused)
        rowsum = None
    else:
        buf = _buffer("rows", (len(idx), sim.n), np.float64)
        block = sim._raw_rows(idx, out=buf) if fused else sim.rows(idx, out=buf)
        rowsum = np.empty(len(idx), dtype=np.int64)
        scan_rows(
            block, idx, excluded, grid or 1.0, width, sentinel, lists, vals, rowsum, rowmax, fused
        )
    if fused:
        sim._rowmax[idx] = rowmax
    return lists, rowsum, _row_max_of(sim, idx)


def _rank_raw(sim, idx, excluded, width, sentinel, lists, vals, rowmax, fused):
    if isinstance(sim, BM25Similarity):  # float32 rows, the band scored exactly (bandrank)
        buf = _buffer("rows32", (len(idx), sim.n), np.float32)
        block = dense_rows32(sim, idx, buf)
        failed = band_rank(sim, block, idx, excluded, width, sentinel, lists, rowmax)
        if len(failed):  # mass ties (rows of zeros): these rows in float64, whole
            out = lists, vals, rowmax
            part = [a[failed] for a in out]
            _rank_raw64(sim, idx[failed], excluded, width, sentinel, *part, fused)
            for a, p in zip(out, part):
                a[failed] = p
        return
    _rank_raw64(sim, idx, excluded, width, sentinel, lists, vals, rowmax, fused)


def _rank_raw64(sim, idx, excluded, width, sentinel, lists, vals, rowmax, fused):
    buf = _buffer("rows", (len(idx), sim.n), np.float64)
    if isinstance(sim, BM25Similarity):  # BLAS part here, the postings row by row with ranking
        block = sim.dense_rows(idx, out=buf)
        q, w = sim._qs, sim._ws_t
        args = (q.indptr, q.indices, q.data, w.indptr, w.indices, w.data)
        postings_rank_rows(*args, block, idx, excluded, width, sentinel, lists, vals, rowmax)
    else:
        block = sim._raw_rows(idx, out=buf)
        rank_rows(block, idx, excluded, width, sentinel, lists, vals, rowmax, fused)


def _ranked_block(sim, idx, width, sentinel, excluded):
    lists, _, rowmax = _scan_block(sim, idx, width, sentinel, excluded, None)
    return lists, rowmax


def _depth_block(sim, idx, in_d1, excluded):
    if isinstance(sim, BM25Similarity) and sim.rank_raw:  # float32 rows, exact (bandrank)
        block = dense_rows32(sim, idx, _buffer("rows32", (len(idx), sim.n), np.float32))
        depth, failed = band_depths(sim, block, idx, excluded, np.flatnonzero(in_d1))
        if len(failed):
            depth[failed] = _depths64(sim, idx[failed], in_d1, excluded)
        return depth, _row_max_of(sim, idx)
    return _depths64(sim, idx, in_d1, excluded), _row_max_of(sim, idx)


def _depths64(sim, idx, in_d1, excluded):
    block = sim.rows(idx, out=_buffer("rows", (len(idx), sim.n), np.float64))
    return _exact_depths(_mask_block(block, idx, excluded), idx, in_d1)


def _weights(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0, 1.0 / np.maximum(ranks - k + 1.0, 1.0))


class Engine:
    """The stages over a similarity whose columns may exclude some items (``rankable``).

    Top lists hold column indices; ``n`` (the sentinel) pads a list whose row has fewer
    rankable items than the list's width. Masks indexed by list entries have n + 1 cells.
    """

    def __init__(
        self,
        sim: Similarity,
        k: int,
        block_rows: int | None,
        progress,
        rankable: np.ndarray,
        runner: BlockRunner,
    ):
        self.sim, self.n, self.k = sim, sim.n, k
        self.block_rows = block_rows
        self.progress = progress or (lambda stage, done, total: None)
        self.rankable = rankable
        self.n_rankable = int(rankable.sum())
        self.excluded = np.flatnonzero(~rankable)
        self.runner = runner
        self.lists: np.ndarray | None = None
        self.rowsum: np.ndarray | None = None
        # Columns of U kept by the caller between plans (replan.Planner), item -> column.
        self.columns: dict[int, np.ndarray] | None = None
        self.columns_max = 0
        self._ahead: dict[int, np.ndarray] = {}  # columns computed ahead (diversity)
        bound = max(float(getattr(sim, "bound", 1.0)), 1e-300) * self.n
        self.grid = 2.0 ** min(100, math.floor(62 - math.log2(bound)))

    def _ext(self, mask: np.ndarray) -> np.ndarray:
        return np.append(mask, False)  # the sentinel is never a candidate or a D1 item

    def _map(self, fn, rows: np.ndarray, *args):
        step = self.block_rows or default_block_rows(self.n)
        blocks = [rows[s : s + step] for s in range(0, len(rows), step)]
        for idx, (*result, rowmax) in self.runner.map(fn, self.sim, blocks, *args):
            if rowmax is not None:  # computed on a Dask worker: keep it here too
                self.sim._rowmax[idx] = rowmax
            yield idx, result

    def _width(self, length: int) -> int:
        return max(0, min(length, self.n_rankable))

    # --- one pass over all rows -------------------------------------------------------------
    def scan(self, length: int) -> None:
        n = self.n
        width = self._width(max(1, length) if n > 1 else 0)
        if self.lists is not None and self.lists.shape[1] >= width:
            return  # kept from an earlier scan of the same U (replan.Planner)
        self.lists = np.empty((n, width), dtype=np.int32)
        sums = not linear_sums_available(self.sim)  # else the seed needs no per-cell sums
        self.rowsum = np.empty(n, dtype=np.int64) if sums else None
        done = 0
        for idx, (lists, rowsum) in self._map(
            _scan_block, np.arange(n), width, n, self.excluded, self.grid if sums else None
        ):
            if sums:
                self.rowsum[idx] = rowsum
            self.lists[idx] = lists
            done += len(idx)
            self.progress("scan", done, n)

    def ranked(self, rows: np.ndarray, length: int) -> np.ndarray:
        """Top lists for ``rows`` (from the scan when long enough, else recomputed)."""
        width = self._width(length)
        if self.lists is not None and self.lists.shape[1] >= width:
            return self.lists[rows, :width]
        out = np.empty((len(rows), width), dtype=np.int32)
        pos = 0
        for idx, (lists,) in self._map(
            _ranked_block, np.asarray(rows), width, self.n, self.excluded
        ):
            out[pos : pos + len(idx)] = lists
            pos += len(idx)
        return out

    def _column(self, j: int, score: np.ndarray | None = None) -> np.ndarray:
        """Column j of U: kept by the caller, computed ahead, or computed now - with a backend
        that computes several at once (``columns``), together with the columns of the items
        that ``score`` (the diversity's distances) ranks next, the likely next picks: one pass
        over the data instead of one per column (a memory-bound matrix-vector product)."""
        kept = self.columns if self.columns is not None else {}
        col = kept.get(j)
        if col is None:
            col = self._ahead.pop(j, None)
        if col is None:
            many = getattr(self.sim, "columns", None)
            if many is None or score is None:
                col = self.sim.column(j)
            else:
                k = min(AHEAD, len(score))
                nxt = np.argpartition(score, k - 1)[:k].tolist()
                ahead = [c for c in nxt if c != j and np.isfinite(score[c]) and c not in kept]
                js = [j] + ahead
                cols = many(np.array(js))
                self._ahead = dict(zip(js[1:], cols[1:]))
                col = cols[0]
        if self.columns is not None and j not in kept and len(kept) < self.columns_max:
            kept[j] = col
        return col

    # --- stages -----------------------------------------------------------------------------
    def diversity(self, chosen: list[int], count: int, seed_item: int | None = None) -> list[int]:
        """Farthest-first from ``chosen``; with nothing chosen, start from ``seed_item`` or the warm seed."""
        if count <= 0:
            return []
        picked: list[int] = []
        taken = ~self.rankable.copy()
        taken[chosen] = True
        maxsim = np.full(self.n, -np.inf)
        for j in chosen:
            np.maximum(maxsim, self._column(j), out=maxsim)
        if not chosen:
            if seed_item is None:  # lowest mean similarity; first on ties
                seed_item = self._seed(taken)
            picked.append(seed_item)
            taken[seed_item] = True
            np.maximum(maxsim, self._column(seed_item), out=maxsim)
        while len(picked) < count:
            score = np.where(taken, np.inf, maxsim)
            u = int(np.argmin(score))
            picked.append(u)
            taken[u] = True
            score[u] = np.inf
            np.maximum(maxsim, self._column(u, score), out=maxsim)
            self.progress("diversity", len(picked), count)
        return picked

    def _seed(self, taken: np.ndarray) -> int:
        if self.rowsum is None:  # the scan skipped the per-cell sums
            return seed(self.sim, ~taken, self.excluded, self.grid)
        return int(np.argmin(np.where(taken, np.iinfo(np.int64).max, self.rowsum)))

    def sumrank_pick(
        self, queries: np.ndarray, candidate: np.ndarray, x: int, count: int
    ) -> list[int]:
        """Sumrank over ``queries`` (rule (2) of the paper); the ``count`` best candidates."""
        if count <= 0:
            return []
        k, depth = self.k, max(self.k, x)
        # Enough list entries to see `depth` candidates: the others in a list are chosen items.
        need = depth + int((self.rankable & ~candidate).sum())
        cand = self._ext(candidate)
        weight = _weights(np.arange(depth + 1), k)  # the same float per rank as elementwise
        sums = np.zeros(self.n + 1)
        none = np.zeros(self.n + 1, dtype=bool)
        # Lists the scan did not keep are recomputed (rows of U): once, not again for every
        # near-tied group the exact sums walk (the weak queries' lists of the uncertainty stage).
        narrow = self.lists is None or self.lists.shape[1] < self._width(need)
        memo: dict | None = {} if narrow and len(queries) * need <= MEMO_ENTRIES else None
        self._walk(queries, need, cand, depth, weight, sums, none, memo)

        def exact(members: np.ndarray) -> dict[int, Fraction]:
            mask = np.zeros(self.n + 1, dtype=bool)
            mask[members] = True
            zeros = np.zeros_like(sums)
            items, ranks = self._walk(queries, need, cand, depth, weight, zeros, mask, memo)
            return _exact_sums(members, items, ranks, k)

        return best(sums[: self.n], candidate, count, exact)

    def _walk(self, queries, need, cand, depth, weight, sums, members, memo=None):
        """Rule (2) over the queries' lists in blocks; the (item, rank) entries of ``members``."""
        items_all, ranks_all = [], []
        step = max(1, (self.block_rows or 4096))
        for start in range(0, len(queries), step):
            lists = None if memo is None else memo.get(start)
            if lists is None:
                lists = self.ranked(queries[start : start + step], need)
                if memo is not None:
                    memo[start] = lists
            cap = lists.size if members.any() else 0
            items, ranks = np.empty(cap, np.int32), np.empty(cap, np.int32)
            m = sumrank_add(lists, cand, depth, weight, sums, members, items, ranks)
            items_all.append(items[:m])
            ranks_all.append(ranks[:m])
        return np.concatenate(items_all), np.concatenate(ranks_all)

    def uncertainty(self, d1: list[int], count: int) -> list[int]:
        if count <= 0:
            return []
        n = self.n
        in_d1 = np.zeros(n, dtype=bool)
        in_d1[d1] = True
        depth = np.full(n, n, dtype=np.int64)  # "no D1 item other than a" ranks after everything
        unknown = np.zeros(n, dtype=bool)
        width = self.lists.shape[1]
        if width:
            hit = self._ext(in_d1)[self.lists]
            found = hit.any(axis=1)
            depth[found] = hit.argmax(axis=1)[found] + 1
            has_other = in_d1.sum() - in_d1 > 0  # a D1 item other than a exists
            complete = width >= self.n_rankable - self.rankable  # the list holds the whole ranking
            unknown = ~found & has_other & ~complete
        rows = np.flatnonzero(unknown)
        if len(rows) + int((depth == n).sum()) > count:  # only then does their exact depth matter
            for idx, (d,) in self._map(_depth_block, rows, in_d1, self.excluded):
                depth[idx] = d
        else:
            depth[rows] = n  # all of them are weak points anyway
        weak = np.lexsort((np.arange(n), -depth))[:count]
        return self.sumrank_pick(np.sort(weak), ~in_d1 & self.rankable, count, count)


def _exact_depths(block: np.ndarray, rows: np.ndarray, in_d1: np.ndarray) -> np.ndarray:
    """Position of the first D1 item in each row's ranking; ``block`` has -inf where not rankable."""
    d1_vals = np.where(in_d1[None, :], block, -np.inf)
    best = d1_vals.max(axis=1)
    first = np.argmax(d1_vals == best[:, None], axis=1)  # smallest index among the best D1 items
    before = (block > best[:, None]).sum(axis=1)
    before += (
        (block == best[:, None]) & (np.arange(block.shape[1])[None, :] < first[:, None])
    ).sum(axis=1)
    return before + 1


def _exact_sums(
    members: np.ndarray, items: np.ndarray, ranks: np.ndarray, k: int
) -> dict[int, Fraction]:
    sel = np.isin(items, members)
    per: dict[int, Counter] = {int(m): Counter() for m in members}
    for item, rank in zip(items[sel].tolist(), ranks[sel].tolist()):
        per[item][rank] += 1
    return {
        m: sum((Fraction(c, 1 if r <= k else r - k + 1) for r, c in cnt.items()), Fraction(0))
        for m, cnt in per.items()
    }


def best(sums: np.ndarray, candidate: np.ndarray, count: int, exact: Callable) -> list[int]:
    """The ``count`` candidates with the highest sums, ties to the smaller index, exactly."""
    cand = np.flatnonzero(candidate)
    s = sums[cand]
    order = np.lexsort((cand, -s))
    cand, s = cand[order], s[order]
    tol = 1e-9 * np.maximum(1.0, np.abs(s))
    # Groups of (nearly) equal float sums; only groups reaching into the first `count` matter.
    breaks = np.flatnonzero(s[:-1] - s[1:] > tol[1:]) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(s)]))
    out = cand.tolist()
    for a, b in zip(starts, ends):
        if a >= count:
            break
        if b - a > 1:
            members = cand[a:b]
            exact_sums = exact(members)
            out[a:b] = sorted(members.tolist(), key=lambda m: (-exact_sums[m], m))
    return out[:count]
