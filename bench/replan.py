"""Incremental re-plan vs full re-plan after new tasks arrive (replan.Planner).

SBERT-style cosine similarity on synthetic 384-d vectors (the model is not needed: the scores
do not depend on where the vectors come from) and BM25 on the MOF corpus. Prints the seconds
of: the first plan (a full scan and its selection), ``add`` of the new tasks + ``select`` (and
the CPU seconds of both, all threads: less sensitive to other jobs than the wall time), a full
re-plan of the grown corpus (``stages.select`` on a fresh similarity), their ratio, the
1-minute load average, and whether both picked the same queue. The planner runs in a child
process; ``--baseline DIR`` runs the same child with another checkout's code right after ours
(its ``Planner``: the API is the same since it was added) and prints baseline / ours.

    .venv/bin/python bench/replan.py                     # N=100000, +1000, M=1000
    .venv/bin/python bench/replan.py --n 30000 --kinds sbert --baseline /tmp/main-tree
    .venv/bin/python bench/replan.py --n 20000 --add 200 --bm25-changes   # why BM25 rescans
"""

import argparse
import json
import os
import subprocess
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

# The child: the first plan, then add + select, with the code of the checkout in argv[1].
CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from alllabel.selection.replan import Planner
from bench.corpus import corpus
kind, n, add, m = sys.argv[2], *map(int, sys.argv[3:6])
texts = corpus(n + add)
vec = np.random.default_rng(0).standard_normal((n + add, 384)) if kind == "sbert" else None
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
load = os.getloadavg()[0]
t = time.perf_counter()
p = Planner(texts[:n], kind=kind, embeddings=None if vec is None else vec[:n], budget=m)
p.select(m)  # the plan before the tasks arrive (it leaves its diversity columns kept)
first = time.perf_counter() - t
t, c = time.perf_counter(), cpu()
p.add(texts[n:], embeddings=None if vec is None else vec[n:])
t_add = time.perf_counter() - t
sel = p.select(m)
out = dict(first=first, add=t_add, total=time.perf_counter() - t, cpu=cpu() - c,
           rescan=p.last_rescan, picks=[sel.indices, sel.stages], load=[load, os.getloadavg()[0]])
print(json.dumps(out))
"""


def child(tree: Path, kind: str, n: int, add: int, m: int) -> dict:
    args = [sys.executable, "-c", CHILD, str(tree), kind, str(n), str(add), str(m)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def line(who: str, kind: str, n: int, add: int, m: int, r: dict) -> str:
    return (
        f"{kind:>5} N={n}+{add} M={m} {who}: first plan {r['first']:.1f}s, add+select "
        f"{r['total']:.2f}s (add {r['add']:.2f}s, select {r['total'] - r['add']:.2f}s; "
        f"{r['cpu']:.2f} CPU-s) (rescan: {r['rescan'] or 'no'}), "
        f"load {r['load'][0]:.1f}-{r['load'][1]:.1f}"
    )


def run(kind: str, n: int, add: int, m: int, baseline: Path | None) -> None:
    for tree in (ROOT, baseline) if baseline else (ROOT,):
        child(tree, kind, 400, 10, 20)  # numba compiles (and caches) each tree's kernels here
    ours = child(ROOT, kind, n, add, m)
    print(line("ours", kind, n, add, m, ours), flush=True)
    if baseline:
        base = child(baseline, kind, n, add, m)
        ratio = f"{base['total'] / ours['total']:.2f}x, CPU {base['cpu'] / ours['cpu']:.2f}x"
        same = base["picks"] == ours["picks"]
        print(line("baseline", kind, n, add, m, base) + f"; baseline/ours {ratio}, same: {same}")
    texts = corpus(n + add)
    vec = np.random.default_rng(0).standard_normal((n + add, 384)) if kind == "sbert" else None
    load = os.getloadavg()[0]
    t = time.perf_counter()
    sim = BM25Similarity(texts) if kind == "bm25" else SBERTSimilarity(texts, embeddings=vec)
    full = select(sim, m)
    secs = time.perf_counter() - t
    same = ours["picks"] == [full.indices, full.stages]
    print(
        f"{kind:>5} N={n}+{add} M={m}: full re-plan {secs:.1f}s = {secs / ours['total']:.1f}x "
        f"ours, load {load:.1f}-{os.getloadavg()[0]:.1f}, same picks: {same}",
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
    ap.add_argument("--baseline", type=Path, help="another checkout whose Planner to time too")
    a = ap.parse_args()
    if a.bm25_changes:
        return bm25_changes(a.n, a.add, a.budget)
    for kind in a.kinds:
        run(kind, a.n, a.add, a.budget, a.baseline)


if __name__ == "__main__":
    main()
