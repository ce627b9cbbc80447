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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from alllabel.selection.blocks import BlockRunner, LocalRunner
from alllabel.selection.engine import BUFFERS, Engine
from alllabel.selection.similarity import DenseSimilarity, Similarity

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
    engine = Engine(sim, k, block_rows, progress, rankable, runner or LocalRunner())
    try:
        return _run(engine, method, key, pre, budget, k, ratios, rng)
    finally:
        BUFFERS.__dict__.clear()  # scratch blocks of this thread; the pool's die with it


def _run(
    engine: Engine, method: str, key: str, pre: list[int], budget: int, k: int, ratios, rng
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
