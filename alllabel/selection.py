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

Sums of unit fractions are compared exactly (floats first, fractions for near-ties), so
mathematical ties really go to the smaller index.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .similarity import DenseSimilarity, Similarity, iter_row_blocks

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
        return [{"index": i, "position": p, "stage": s} for p, (i, s) in enumerate(zip(self.indices, self.stages))]


def stage_sizes(budget: int, ratios: Sequence[float] = (1, 3, 1)) -> dict[str, int]:
    """n_D, n_S, n_U for a budget; ratios are (diversity, similarity, uncertainty)."""
    if len(ratios) != 3:
        raise ValueError(f"ratios must be three numbers (diversity, similarity, uncertainty), got {ratios!r}")
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


def _validate(n: int, budget, k, pre_chosen) -> list[int]:
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
    free = n - len(pre)
    if budget < 1 or budget > free:
        raise ValueError(
            f"budget must be between 1 and the number of selectable items ({free} of {n}"
            f"{', the rest are already chosen' if pre else ''}), got {budget}"
        )
    return pre


def _top_lists(block: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
    """Per row, the first ``length`` other items in ranking order (U descending, index ascending).

    ``block`` is modified (diagonal set to -inf).
    """
    b, n = block.shape
    block[np.arange(b), rows] = -np.inf
    if length >= n - 1:
        return np.argsort(-block, axis=1, kind="stable")[:, : n - 1]
    neg = -block
    kth = np.partition(neg, length - 1, axis=1)[:, length - 1 : length]  # -(L-th largest)
    take = neg < kth
    need = length - take.sum(axis=1)
    eq = neg == kth
    # Boundary ties: keep the smallest indices.
    take |= eq & (np.cumsum(eq, axis=1, dtype=np.int32) <= need[:, None])
    cols = np.nonzero(take)[1].reshape(b, length)
    order = np.argsort(np.take_along_axis(neg, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1).astype(np.int32)


def _weights(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0, 1.0 / np.maximum(ranks - k + 1.0, 1.0))


class _Engine:
    def __init__(self, sim: Similarity, k: int, block_rows: int | None, progress):
        self.sim, self.n, self.k = sim, sim.n, k
        self.block_rows = block_rows
        self.progress = progress or (lambda stage, done, total: None)
        self.lists: np.ndarray | None = None
        self.rowsum: np.ndarray | None = None

    # --- one pass over all rows -------------------------------------------------------------
    def scan(self, length: int) -> None:
        n = self.n
        length = max(1, min(n - 1, length)) if n > 1 else 0
        self.lists = np.empty((n, length), dtype=np.int32)
        self.rowsum = np.empty(n, dtype=np.int64)
        # Row sums are accumulated as int64 on a fixed-point grid: exact, so independent of the
        # summation order (mathematically tied means stay tied).
        bound = max(float(getattr(self.sim, "bound", 1.0)), 1e-300) * n
        grid = 2.0 ** min(100, math.floor(62 - math.log2(bound)))
        done = 0
        for idx, block in iter_row_blocks(self.sim, block_rows=self.block_rows):
            block[np.arange(len(idx)), idx] = 0.0
            self.rowsum[idx] = np.rint(block * grid).astype(np.int64).sum(axis=1)
            if length:
                self.lists[idx] = _top_lists(block, idx, length)
            done += len(idx)
            self.progress("scan", done, n)

    def ranked(self, rows: np.ndarray, length: int) -> np.ndarray:
        """Top lists for ``rows`` (from the scan when long enough, else recomputed)."""
        length = min(self.n - 1, length)
        if self.lists is not None and self.lists.shape[1] >= length:
            return self.lists[rows, :length]
        out = np.empty((len(rows), length), dtype=np.int32)
        pos = 0
        for idx, block in iter_row_blocks(self.sim, rows, self.block_rows):
            out[pos : pos + len(idx)] = _top_lists(block, idx, length)
            pos += len(idx)
        return out

    # --- stages -----------------------------------------------------------------------------
    def diversity(self, chosen: list[int], count: int, seed_item: int | None = None) -> list[int]:
        """Farthest-first from ``chosen``; with nothing chosen, start from ``seed_item`` or the warm seed."""
        if count <= 0:
            return []
        picked: list[int] = []
        taken = np.zeros(self.n, dtype=bool)
        taken[chosen] = True
        maxsim = np.full(self.n, -np.inf)
        for j in chosen:
            np.maximum(maxsim, self.sim.column(j), out=maxsim)
        if not chosen:
            if seed_item is None:
                seed_item = int(np.argmin(self.rowsum))  # lowest mean similarity; first on ties
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

    def sumrank_pick(self, queries: np.ndarray, candidate: np.ndarray, x: int, count: int) -> list[int]:
        """Sumrank over ``queries`` (rule (2) of the paper); the ``count`` best candidates."""
        if count <= 0:
            return []
        k, depth = self.k, max(self.k, x)
        need = depth + int((~candidate).sum())  # enough list entries to see `depth` candidates
        items_all, ranks_all = [], []
        step = max(1, (self.block_rows or 4096))
        for start in range(0, len(queries), step):
            q = queries[start : start + step]
            lists = self.ranked(q, need)
            is_cand = candidate[lists]
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
        if self.lists.shape[1]:
            hit = in_d1[self.lists]
            found = hit.any(axis=1)
            depth[found] = hit.argmax(axis=1)[found] + 1
            has_other = in_d1.sum() - in_d1 > 0  # a D1 item other than a exists
            unknown = ~found & has_other & (self.lists.shape[1] < n - 1)
        rows = np.flatnonzero(unknown)
        if len(rows) + int((depth == n).sum()) > count:  # only then does their exact depth matter
            for idx, block in iter_row_blocks(self.sim, rows, self.block_rows):
                depth[idx] = _exact_depths(block, idx, in_d1)
        else:
            depth[rows] = n  # all of them are weak points anyway
        weak = np.lexsort((np.arange(n), -depth))[:count]
        return self.sumrank_pick(np.sort(weak), ~in_d1, count, count)


def _exact_depths(block: np.ndarray, rows: np.ndarray, in_d1: np.ndarray) -> np.ndarray:
    b = len(rows)
    block[np.arange(b), rows] = -np.inf
    d1_vals = np.where(in_d1[None, :], block, -np.inf)
    d1_vals[np.arange(b), rows] = -np.inf
    best = d1_vals.max(axis=1)
    first = np.argmax(d1_vals == best[:, None], axis=1)  # smallest index among the best D1 items
    before = (block > best[:, None]).sum(axis=1)
    before += ((block == best[:, None]) & (np.arange(block.shape[1])[None, :] < first[:, None])).sum(axis=1)
    return before + 1


def _exact_sums(members: np.ndarray, items: np.ndarray, ranks: np.ndarray, k: int) -> dict[int, Fraction]:
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
    method: str = "allabel",
    seed: int = 0,
    block_rows: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Selection:
    """Choose ``budget`` items for human annotation, in queue order.

    ``similarity`` is an N x N array or a backend (``BM25Similarity``, ``SBERTSimilarity``,
    ``DenseSimilarity``). ``order`` is the stage order (``DSU`` as in the paper, or the
    ablations ``SDU``/``SUD``). ``pre_chosen`` are already-annotated items: they are never
    returned, seed the core-set and count as D1. ``method`` ``random`` (seeded) and
    ``coreset`` (cold-start core-set, seeded) are the paper's baselines.
    """
    sim = _as_similarity(similarity)
    n = sim.n
    pre = _validate(n, budget, k, pre_chosen)
    budget, k = int(budget), int(k)
    key = str(order).upper().replace("-", "")
    if key not in STAGE_ORDERS:
        raise ValueError(f"unknown stage order {order!r}; use one of D-S-U, S-D-U, S-U-D")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    rng = np.random.default_rng(seed)
    engine = _Engine(sim, k, block_rows, progress)

    if method == "random":
        free = np.setdiff1d(np.arange(n), pre)
        picked = rng.permutation(free)[:budget].tolist()
        return Selection(picked, ["random"] * budget, {"random": budget})
    if method == "coreset":
        free = np.setdiff1d(np.arange(n), pre)
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
            candidate = np.ones(n, dtype=bool)
            candidate[chosen] = False
            picked = engine.sumrank_pick(np.arange(n), candidate, count, count)
        else:
            picked = engine.uncertainty(chosen, count)
        log.info("%s stage chose %d item(s)", name, len(picked))
        chosen += picked
        indices += picked
        stages += [name] * len(picked)
    return Selection(indices, stages, sizes)
