"""ALLabel's three-stage selection (paper Section 4): diversity -> similarity -> uncertainty.

Rules where the paper is loose (they are the contract, and tests/reference_selection.py is a
literal, slow implementation of them):

* U[i, j] is the similarity of item j as a demonstration for query i; the diagonal is ignored.
  Every tie goes to the smaller index.
* Stage sizes: n_D = floor(M r_D / R + 1/2), n_U = floor(M r_U / R + 1/2), n_S = M - n_D - n_U.
* Diversity (warm-start core-set): with nothing chosen, seed = argmin_i mean_{j != i} U[i, j];
  then add argmin over unchosen i of max_{j chosen} U[i, j].
* Similarity: every item is a query; candidates are the unchosen items. For query a, candidates
  other than a are ranked by U[a, .] descending; sumrank[b] gains 1 if rank <= k,
  1 / (rank - k + 1) if k < rank <= x (x = n_S), else 0. Take the n_S highest sumrank.
* Uncertainty: D1 = everything chosen so far. depth(a) = position of the first D1 item in a's
  ranking of all other items (N if there is none). The n_U deepest queries are the weak points;
  the sumrank rule runs again with only them as queries, candidates = items outside D1, x = n_U.

* Exclusions (beyond the paper; none = the paper exactly): an excluded item is removed from
  U's columns - never a candidate, never in any ranking (so not in depth either), not in the
  seed's mean - and stays a row (a query). Pre-chosen items are never excluded.

Sums of unit fractions are compared exactly (floats first, fractions for near-ties), so
mathematical ties really go to the smaller index.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from alllabel.selection.blocks import BlockRunner, LocalRunner
from alllabel.selection.similarity import DenseSimilarity, Similarity, default_block_rows

log = logging.getLogger(__name__)

STAGE_ORDERS = ("DSU", "SDU", "SUD")
STAGE_NAMES = {"D": "diversity", "S": "similarity", "U": "uncertainty"}
METHODS = ("allabel", "random", "coreset")


@dataclass
class Selection:
    """The chosen items in queue order, with the stage that chose each one."""

    indices: list[int]
    stages: list[str]
    stage_sizes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def as_records(self) -> list[dict]:
        return [
            {"index": i, "position": p, "stage": s}
            for p, (i, s) in enumerate(zip(self.indices, self.stages))
        ]


def stage_sizes(budget: int, ratios: Sequence[float] = (1, 3, 1)) -> dict[str, int]:
    """n_D, n_S, n_U for a budget; ratios are (diversity, similarity, uncertainty)."""
    if len(ratios) != 3:
        raise ValueError(
            f"ratios must be three numbers (diversity, similarity, uncertainty), got {ratios!r}"
        )
    r = [Fraction(x) if isinstance(x, int) else Fraction(float(x)) for x in ratios]
    if any(x < 0 for x in r) or sum(r) <= 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {tuple(ratios)!r}")
    total = sum(r)
    n_d = math.floor(budget * r[0] / total + Fraction(1, 2))
    n_u = math.floor(budget * r[2] / total + Fraction(1, 2))
    n_s = budget - n_d - n_u
    if n_s < 0:  # only when r_S is tiny and both other stages round up: shrink them, U first
        n_u += n_s
        n_s = 0
        if n_u < 0:
            n_d += n_u
            n_u = 0
    return {"diversity": n_d, "similarity": n_s, "uncertainty": n_u}


def _validate(n: int, budget, k, pre_chosen, exclude) -> tuple[list[int], np.ndarray]:
    """Checked pre-chosen indices and the mask of items that may be ranked (not excluded)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be a whole number of tasks, got {budget!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (demonstrations per query) must be an integer >= 1, got {k!r}")
    pre = [int(i) for i in pre_chosen]
    bad = [i for i in pre if not 0 <= i < n]
    if bad:
        raise ValueError(f"pre-chosen indices out of range 0..{n - 1}: {bad[:5]}")
    if len(set(pre)) != len(pre):
        raise ValueError("pre-chosen indices contain duplicates")
    rankable = np.ones(n, dtype=bool)
    if exclude is not None:
        ex = np.asarray(exclude)
        if ex.dtype == np.bool_:
            if ex.shape != (n,):
                raise ValueError(
                    f"exclude as a mask must have one entry per item ({n}), got shape {ex.shape}"
                )
            ex = np.flatnonzero(ex)
        ex = ex.astype(np.int64, copy=False).ravel()
        if len(ex) and (ex.min() < 0 or ex.max() >= n):
            raise ValueError(f"excluded indices out of range 0..{n - 1}")
        rankable[ex] = False
        rankable[pre] = True  # an already-chosen item stays a demonstration whatever the rules say
    free = int(rankable.sum()) - len(pre)
    if budget < 1 or budget > free:
        extra = ", the rest are already chosen" if pre else ""
        extra += f"{' or' if pre else ', the rest are'} excluded" if (~rankable).any() else ""
        raise ValueError(
            f"budget must be between 1 and the number of selectable items ({free} of {n}{extra}), got {budget}"
        )
    return pre, rankable


_BUFFERS = threading.local()


def _buffer(name: str, shape: tuple[int, int], dtype) -> np.ndarray:
    """A per-thread scratch array, reused across blocks (fresh N-wide temporaries per block cost
    page faults: about a fifth of the scan's CPU time was system time)."""
    buf = getattr(_BUFFERS, name, None)
    if buf is None or buf.shape[1] != shape[1] or buf.shape[0] < shape[0] or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        setattr(_BUFFERS, name, buf)
    return buf[: shape[0]]


def _top_lists(block: np.ndarray, width: int, full: bool, sentinel: int) -> np.ndarray:
    """Per row, the first ``width`` items in ranking order (U descending, index ascending).

    Items that must not appear (the row itself, excluded columns) are -inf in ``block``.
    ``full``: some rows may have fewer than ``width`` rankable items; their lists end in
    ``sentinel``. Otherwise every row has at least ``width`` finite values.
    """
    b, n = block.shape
    if full:
        order = np.argsort(-block, axis=1, kind="stable")[:, :width]
        order[np.isneginf(np.take_along_axis(block, order, axis=1))] = sentinel
        return order.astype(np.int32)
    part = _buffer("part", (b, n), np.float64)
    np.copyto(part, block)
    part.partition(n - width, axis=1)
    kth = part[:, n - width : n - width + 1].copy()  # the width-th largest value of each row
    take = np.greater_equal(block, kth, out=_buffer("take", (b, n), np.bool_))
    count = np.count_nonzero(take, axis=1)
    for r in np.flatnonzero(
        count != width
    ):  # ties at the boundary (rare): keep the smallest indices
        eq = np.flatnonzero(block[r] == kth[r, 0])
        take[r, eq[width - (count[r] - len(eq)) :]] = False
    cols = np.nonzero(take)[1].reshape(b, width)  # ascending indices per row
    vals = np.take_along_axis(block, cols, axis=1)
    np.negative(vals, out=vals)
    order = np.argsort(vals, axis=1, kind="stable")  # stable: equal values keep index order
    return np.take_along_axis(cols, order, axis=1).astype(np.int32)


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
def _scan_block(sim, idx, width, full, sentinel, excluded, grid):
    block = sim.rows(idx, out=_buffer("rows", (len(idx), sim.n), np.float64))
    # Row sums on an int64 fixed-point grid: exact, so independent of summation order and of
    # the block size (mathematically tied means stay tied). Excluded items do not count.
    block[np.arange(len(idx)), idx] = 0.0
    scaled = _buffer("part", block.shape, np.float64)
    np.multiply(block, grid, out=scaled)
    np.rint(scaled, out=scaled)
    rowsum = scaled.sum(axis=1, dtype=np.int64)
    if len(excluded):
        rowsum -= np.rint(block[:, excluded] * grid).sum(axis=1, dtype=np.int64)
    lists = _top_lists(_mask_block(block, idx, excluded), width, full, sentinel) if width else None
    return lists, rowsum, _row_max_of(sim, idx)


def _ranked_block(sim, idx, width, full, sentinel, excluded):
    block = sim.rows(idx, out=_buffer("rows", (len(idx), sim.n), np.float64))
    return _top_lists(_mask_block(block, idx, excluded), width, full, sentinel), _row_max_of(
        sim, idx
    )


def _depth_block(sim, idx, in_d1, excluded):
    block = sim.rows(idx, out=_buffer("rows", (len(idx), sim.n), np.float64))
    return _exact_depths(_mask_block(block, idx, excluded), idx, in_d1), _row_max_of(sim, idx)


def _weights(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0, 1.0 / np.maximum(ranks - k + 1.0, 1.0))


class _Engine:
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

    def _ext(self, mask: np.ndarray) -> np.ndarray:
        return np.append(mask, False)  # the sentinel is never a candidate or a D1 item

    def _map(self, fn, rows: np.ndarray, *args):
        step = self.block_rows or default_block_rows(self.n)
        blocks = [rows[s : s + step] for s in range(0, len(rows), step)]
        for idx, (*result, rowmax) in self.runner.map(fn, self.sim, blocks, *args):
            if rowmax is not None:  # computed on a Dask worker: keep it here too
                self.sim._rowmax[idx] = rowmax
            yield idx, result

    def _width(self, length: int) -> tuple[int, bool]:
        width = max(0, min(length, self.n_rankable))
        return width, width >= self.n_rankable - 1

    # --- one pass over all rows -------------------------------------------------------------
    def scan(self, length: int) -> None:
        n = self.n
        width, full = self._width(max(1, length) if n > 1 else 0)
        self.lists = np.empty((n, width), dtype=np.int32)
        self.rowsum = np.empty(n, dtype=np.int64)
        bound = max(float(getattr(self.sim, "bound", 1.0)), 1e-300) * n
        grid = 2.0 ** min(100, math.floor(62 - math.log2(bound)))
        done = 0
        for idx, (lists, rowsum) in self._map(
            _scan_block, np.arange(n), width, full, n, self.excluded, grid
        ):
            self.rowsum[idx] = rowsum
            if lists is not None:
                self.lists[idx] = lists
            done += len(idx)
            self.progress("scan", done, n)

    def ranked(self, rows: np.ndarray, length: int) -> np.ndarray:
        """Top lists for ``rows`` (from the scan when long enough, else recomputed)."""
        width, full = self._width(length)
        if self.lists is not None and self.lists.shape[1] >= width:
            return self.lists[rows, :width]
        out = np.empty((len(rows), width), dtype=np.int32)
        pos = 0
        for idx, (lists,) in self._map(
            _ranked_block, np.asarray(rows), width, full, self.n, self.excluded
        ):
            out[pos : pos + len(idx)] = lists
            pos += len(idx)
        return out

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
            np.maximum(maxsim, self.sim.column(j), out=maxsim)
        if not chosen:
            if seed_item is None:  # lowest mean similarity; first on ties
                seed_item = int(np.argmin(np.where(taken, np.iinfo(np.int64).max, self.rowsum)))
            picked.append(seed_item)
            taken[seed_item] = True
            np.maximum(maxsim, self.sim.column(seed_item), out=maxsim)
        while len(picked) < count:
            u = int(np.argmin(np.where(taken, np.inf, maxsim)))
            picked.append(u)
            taken[u] = True
            np.maximum(maxsim, self.sim.column(u), out=maxsim)
            self.progress("diversity", len(picked), count)
        return picked

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
        items_all, ranks_all = [], []
        step = max(1, (self.block_rows or 4096))
        for start in range(0, len(queries), step):
            q = queries[start : start + step]
            lists = self.ranked(q, need)
            is_cand = cand[lists]
            ranks = np.cumsum(is_cand, axis=1, dtype=np.int32)
            keep = is_cand & (ranks <= depth)
            items_all.append(lists[keep])
            ranks_all.append(ranks[keep])
        items = np.concatenate(items_all) if items_all else np.empty(0, np.int32)
        ranks = np.concatenate(ranks_all) if ranks_all else np.empty(0, np.int32)
        sums = np.bincount(items, weights=_weights(ranks, k), minlength=self.n)
        return _best(sums, candidate, count, lambda members: _exact_sums(members, items, ranks, k))

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


def _best(sums: np.ndarray, candidate: np.ndarray, count: int, exact: Callable) -> list[int]:
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


def _as_similarity(similarity) -> Similarity:
    if isinstance(similarity, Similarity) and not isinstance(similarity, np.ndarray):
        return similarity
    return DenseSimilarity(similarity)


def select(
    similarity,
    budget: int,
    k: int = 3,
    ratios: Sequence[float] = (1, 3, 1),
    *,
    order: str = "DSU",
    pre_chosen: Iterable[int] = (),
    exclude: Iterable[int] | np.ndarray | None = None,
    method: str = "allabel",
    seed: int = 0,
    block_rows: int | None = None,
    runner: BlockRunner | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Selection:
    """Choose ``budget`` items for human annotation, in queue order.

    ``similarity`` is an N x N array or a backend (``BM25Similarity``, ``SBERTSimilarity``,
    ``DenseSimilarity``). ``order`` is the stage order (``DSU`` as in the paper, or the
    ablations ``SDU``/``SUD``). ``pre_chosen`` are already-annotated items: they are never
    returned, seed the core-set and count as D1. ``method`` ``random`` (seeded) and
    ``coreset`` (cold-start core-set, seeded) are the paper's baselines.

    ``exclude`` (indices or a boolean mask; ``None`` = the paper exactly) are items that must
    not be offered to humans: near-duplicates, length outliers (see ``screening.screen``).
    They are removed from U's columns - never picked, never ranked as a demonstration, not in
    the core-set's mean - but stay queries (rows): the selection still serves them.
    ``runner`` runs the row scan (default: threads here; ``blocks.DaskRunner`` for a cluster).
    """
    sim = _as_similarity(similarity)
    n = sim.n
    pre, rankable = _validate(n, budget, k, pre_chosen, exclude)
    budget, k = int(budget), int(k)
    key = str(order).upper().replace("-", "")
    if key not in STAGE_ORDERS:
        raise ValueError(f"unknown stage order {order!r}; use one of D-S-U, S-D-U, S-U-D")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    rng = np.random.default_rng(seed)
    engine = _Engine(sim, k, block_rows, progress, rankable, runner or LocalRunner())
    try:
        return _run(engine, method, key, pre, budget, k, ratios, rng)
    finally:
        _BUFFERS.__dict__.clear()  # scratch blocks of this thread; the pool's die with it


def _run(
    engine: _Engine, method: str, key: str, pre: list[int], budget: int, k: int, ratios, rng
) -> Selection:
    n = engine.n
    free = np.flatnonzero(engine.rankable)
    free = np.setdiff1d(free, pre)
    if method == "random":
        picked = rng.permutation(free)[:budget].tolist()
        return Selection(picked, ["random"] * budget, {"random": budget})
    if method == "coreset":
        seed_item = None if pre else int(rng.choice(free))
        picked = engine.diversity(pre, budget, seed_item=seed_item)
        return Selection(picked, ["diversity"] * budget, {"diversity": budget})

    sizes = stage_sizes(budget, ratios)
    chosen_before_s = len(pre) + (sizes["diversity"] if key.index("D") < key.index("S") else 0)
    engine.scan(max(k, sizes["similarity"]) + chosen_before_s + 1)

    chosen = list(pre)
    indices: list[int] = []
    stages: list[str] = []
    for letter in key:
        name = STAGE_NAMES[letter]
        count = sizes[name]
        if letter == "D":
            picked = engine.diversity(chosen, count)
        elif letter == "S":
            candidate = engine.rankable.copy()
            candidate[chosen] = False
            picked = engine.sumrank_pick(np.arange(n), candidate, count, count)
        else:
            picked = engine.uncertainty(chosen, count)
        log.info("%s stage chose %d item(s)", name, len(picked))
        chosen += picked
        indices += picked
        stages += [name] * len(picked)
    return Selection(indices, stages, sizes)
