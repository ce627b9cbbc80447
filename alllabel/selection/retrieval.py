"""Demonstration retrieval: the k most similar annotated items for each query (paper eq. 1).

Only the pool's columns of U are computed (``Similarity.scores``): a pool of 1,000 among 20,000
tasks costs a twentieth of full rows. The values are bit-identical to the full rows' (exact
integer dot products, same normalisation), so the demonstrations are too. BM25 normalises by
each query row's maximum over all tasks: known after a selection scan on the same object
(``simcache.SimilarityCache`` shares it), otherwise computed once for the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alllabel.selection.similarity import BLOCK_CELLS, Similarity


@dataclass(frozen=True)
class Demonstration:
    index: int  # item index in the similarity backend
    similarity: float


def retrieve(
    sim: Similarity,
    queries: Sequence[int],
    pool: Sequence[int],
    k: int = 3,
    block_rows: int | None = None,
) -> list[list[Demonstration]]:
    """For each query, up to ``k`` pool items ranked by U[query, item] (ties: smaller index).

    A query never retrieves itself, so in-domain evaluation and re-annotation are safe.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pool_idx = np.unique(np.asarray(pool, dtype=np.int64))
    queries = np.asarray(queries, dtype=np.int64)
    out: list[list[Demonstration]] = []
    if len(pool_idx) == 0:
        return [[] for _ in queries]
    step = block_rows or max(1, BLOCK_CELLS // len(pool_idx))
    for start in range(0, len(queries), step):
        idx = queries[start : start + step]
        vals = sim.scores(idx, pool_idx) if hasattr(sim, "scores") else sim.rows(idx)[:, pool_idx]
        vals[pool_idx[None, :] == idx[:, None]] = -np.inf  # never itself
        keys = sim.order_keys(idx, pool_idx, vals) if hasattr(sim, "order_keys") else vals
        order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        for r in range(len(idx)):
            out.append(
                [
                    Demonstration(int(pool_idx[c]), float(vals[r, c]))
                    for c in order[r]
                    if np.isfinite(vals[r, c])
                ]
            )
    return out


DEMONSTRATIONS = ("similar", "random")


class RandomDemonstrations:
    """``sim`` whose retrieval picks the k demonstrations at random (the paper's ablation of
    similarity-based retrieval); everything else - selection, the similarity values that score
    confidence - is ``sim``'s. Each query's draw depends only on ``seed`` and the query."""

    def __init__(self, sim: Similarity, seed: int = 0):
        self.sim, self.seed = sim, seed

    def __getattr__(self, name: str):
        return getattr(self.sim, name)

    def order_keys(self, rows: np.ndarray, pool: np.ndarray, vals: np.ndarray) -> np.ndarray:
        keys = np.stack(
            [np.random.default_rng([self.seed, int(r)]).random(len(pool)) for r in rows]
        )
        keys[~np.isfinite(vals)] = -np.inf  # never itself
        return keys


def demonstrations(sim: Similarity, kind: str, seed: int = 0) -> Similarity:
    """``sim`` for ``kind`` "similar" (the paper's retrieval), or random demonstrations."""
    if kind not in DEMONSTRATIONS:
        raise ValueError(f"demonstrations must be one of {', '.join(DEMONSTRATIONS)}, got {kind!r}")
    return sim if kind == "similar" else RandomDemonstrations(sim, seed)
