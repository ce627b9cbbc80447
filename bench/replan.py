"""Incremental re-plan vs full re-plan after new tasks arrive (replan.Planner).

SBERT-style cosine similarity on synthetic 384-d vectors (the model is not needed: the scores
do not depend on where the vectors come from) and BM25 on the MOF corpus. Prints the seconds
of: the first plan (a full scan and its selection), ``add`` of the new tasks + ``select``, a full re-plan of the
grown corpus in the same process (``stages.select`` on a fresh similarity), their ratio, the
1-minute load average, and whether both picked the same queue.

    .venv/bin/python bench/replan.py                     # N=100000, +1000, M=1000
    .venv/bin/python bench/replan.py --n 20000 --add 500 --kinds sbert
    .venv/bin/python bench/replan.py --n 20000 --add 200 --bm25-changes   # why BM25 rescans
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from alllabel import BM25Similarity, select  # noqa: E402
from alllabel.selection.replan import Planner  # noqa: E402
from alllabel.selection.similarity import SBERTSimilarity  # noqa: E402
from bench.corpus import corpus  # noqa: E402


def run(kind: str, n: int, add: int, m: int) -> None:
    texts = corpus(n + add)
    vec = np.random.default_rng(0).standard_normal((n + add, 384)) if kind == "sbert" else None
    load = os.getloadavg()[0]
    t = time.perf_counter()
    p = Planner(texts[:n], kind=kind, embeddings=None if vec is None else vec[:n], budget=m)
    p.select(m)  # the plan before the tasks arrive (it leaves its diversity columns kept)
    first = time.perf_counter() - t
    t = time.perf_counter()
    p.add(texts[n:], embeddings=None if vec is None else vec[n:])
    t_add = time.perf_counter() - t
    inc_sel = p.select(m)
    inc = time.perf_counter() - t
    t = time.perf_counter()
    sim = BM25Similarity(texts) if kind == "bm25" else SBERTSimilarity(texts, embeddings=vec)
    full_sel = select(sim, m)
    full = time.perf_counter() - t
    same = (inc_sel.indices, inc_sel.stages) == (full_sel.indices, full_sel.stages)
    print(
        f"{kind:>5} N={n}+{add} M={m}: first plan {first:.1f}s, add+select {inc:.1f}s "
        f"(add {t_add:.1f}s, select {inc - t_add:.1f}s) "
        f"(rescan: {p.last_rescan or 'no'}), full re-plan {full:.1f}s = {full / inc:.1f}x, "
        f"load {load:.1f}-{os.getloadavg()[0]:.1f}, same picks: {same}",
        flush=True,
    )


def bm25_changes(n: int, add: int, m: int) -> None:
    """How many rows keep the order of their old items in their top list when BM25's idf and
    avgdl move with ``add`` new texts: an exact incremental update could skip only those."""
    texts = corpus(n + add)
    before = Planner(texts[:n], budget=m, slack=0)
    after = Planner(texts, budget=m, slack=0)
    w = before.width
    same = top3 = 0
    for i in range(n):
        kept = after.lists[i, :w][after.lists[i, :w] < n]  # old items, in the new order
        same += np.array_equal(kept, before.lists[i, : len(kept)])
        top3 += np.array_equal(kept[:3], before.lists[i, :3])
    moved = float(np.mean(before.sim._rowmax != after.sim._rowmax[:n]))
    print(
        f" bm25 N={n}+{add}: rows whose first {w} keep their order: {same / n:.1%}, "
        f"first 3: {top3 / n:.1%}, row maxima changed: {moved:.1%}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--add", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--kinds", nargs="+", default=["sbert", "bm25"])
    ap.add_argument("--bm25-changes", action="store_true", help="only count changed BM25 rows")
    a = ap.parse_args()
    if a.bm25_changes:
        return bm25_changes(a.n, a.add, a.budget)
    for kind in a.kinds:
        run(kind, a.n, a.add, a.budget)


if __name__ == "__main__":
    main()
