"""Selection speed and memory at scale (BM25, budget M).

Prints one line per size: N, M, seconds (similarity build + selection) and the CPU seconds they
took (all threads; on C free cores the wall time is at least cpu / C), peak MiB of the process
that ran it, the 1-minute load average before and after (the machine may be shared), and a
fingerprint of the picks (SHA-1 of the queue with its stages) to compare implementations. At sizes up to --naive-max it also runs the naive path in the same process - rank-bm25
scoring every query one by one into a dense N x N matrix, then select() on that matrix - and
prints the time ratio naive / ours and whether both chose the same tasks.

    .venv/bin/python bench/selection.py                    # 1000 (+naive), 20000, 100000
    .venv/bin/python bench/selection.py --sizes 2000 --naive-max 2000
    .venv/bin/python bench/selection.py --sizes 20000 100000 --baseline /path/to/old/checkout

``--baseline DIR`` runs each size also with the code of another checkout (its own
bench/selection.py, in a fresh process right after ours) and prints its line and the ratios
baseline / ours of seconds, CPU seconds and peak memory, and whether the picks are the same.
"""

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from alllabel import BM25Similarity, select  # noqa: E402
from alllabel.text.tokenize import tokenize  # noqa: E402
from bench.corpus import corpus  # noqa: E402


def ours(n: int, m: int) -> tuple[float, list[int]]:
    secs, sel = ours_full(n, m)
    return secs, sel.indices


def ours_full(n: int, m: int):
    texts = corpus(n)
    t = time.perf_counter()
    sel = select(BM25Similarity(texts), m)
    return time.perf_counter() - t, sel


def fingerprint(sel) -> str:
    return hashlib.sha1(json.dumps([sel.indices, sel.stages]).encode()).hexdigest()[:12]


def naive(n: int, m: int) -> tuple[float, list[int]]:
    from rank_bm25 import BM25Okapi

    texts = corpus(n)
    t = time.perf_counter()
    tokens = [tokenize(x) for x in texts]
    bm25 = BM25Okapi(tokens)
    S = np.array([bm25.get_scores(q) for q in tokens])
    np.fill_diagonal(S, -np.inf)
    U = np.maximum(S, 0) / S.max(axis=1, keepdims=True)
    sel = select(U, m)
    return time.perf_counter() - t, sel.indices


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    # CPU time (user + system, all threads) is less sensitive than wall time to other jobs
    # on a shared machine: on C free cores the wall time is at least cpu / C.
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000, 100000])
    ap.add_argument("--budget", type=int, default=1000, help="M (capped at 5%% of N for small N)")
    ap.add_argument("--naive-max", type=int, default=1000)
    ap.add_argument("--baseline", help="another checkout to compare with, in the same run")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size, JSON out
    a = ap.parse_args()
    if a.one:
        m = min(a.budget, max(1, a.one // 20))
        load = os.getloadavg()[0]
        cpu0 = cpu_seconds()
        secs, sel = ours_full(a.one, m)
        print(
            json.dumps(
                {
                    "n": a.one,
                    "m": m,
                    "seconds": secs,
                    "peak_mib": peak_mib(),
                    "cpu": cpu_seconds() - cpu0,
                    "head": sel.indices[:5],
                    "picks": fingerprint(sel),
                    "load": [load, os.getloadavg()[0]],
                }
            )
        )
        return
    print(
        f"{'N':>7} {'M':>5} {'seconds':>8} {'cpu s':>7} {'peak MiB':>9} {'load':>9} {'picks':>12}  naive"
    )
    for n in a.sizes:
        r = child(Path(__file__), n, a.budget)
        extra = ""
        if n <= a.naive_max:
            t_ours, idx_ours = ours(n, r["m"])
            t_naive, idx_naive = naive(n, r["m"])
            extra = f"{t_naive:.1f}s = {t_naive / t_ours:.0f}x ours ({t_ours:.2f}s in this process), same tasks: {idx_naive == idx_ours}"
        print(row(n, r, extra), flush=True)
        if a.baseline:
            b = child(Path(a.baseline) / "bench" / "selection.py", n, a.budget)
            ratios = "  ".join(  # an older checkout's bench may not report cpu seconds
                f"{k} {b[k] / r[k]:.2f}x" for k in ("seconds", "cpu", "peak_mib") if r[k] and k in b
            )
            same = b["picks"] == r["picks"]
            print(row(n, b, f"baseline; baseline/ours: {ratios}, same picks: {same}"), flush=True)


def child(script: Path, n: int, budget: int) -> dict:
    """One size in a fresh process (so its peak memory is its own), with ``script``'s code."""
    out = subprocess.run(
        [sys.executable, str(script), "--one", str(n), "--budget", str(budget)],
        capture_output=True,
        text=True,
        check=True,
        cwd=script.parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(n: int, r: dict, extra: str) -> str:
    load = f"{r['load'][0]:.1f}-{r['load'][1]:.1f}"
    cpu = f"{r['cpu']:>7.1f}" if "cpu" in r else f"{'-':>7}"
    return (
        f"{n:>7} {r['m']:>5} {r['seconds']:>8.1f} {cpu} {r['peak_mib']:>9.0f} "
        f"{load:>9} {r['picks']:>12}  {extra}"
    )


if __name__ == "__main__":
    main()
