"""The selection scan on a local Dask cluster of 1, 2 and 4 workers vs threads in-process.

Each worker is a process with one thread (BLAS limited to one thread). Prints the seconds of
``select`` (the BM25 index is built once, outside the timing) per runner, the ratio to the
one-thread in-process baseline measured in the same run, the 1-minute load average, and
whether the picks are the same.

    .venv/bin/python bench/dask_scan.py --n 20000
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alllabel import BM25Similarity, select  # noqa: E402
from alllabel.selection.blocks import DaskRunner, LocalRunner  # noqa: E402
from bench.corpus import corpus  # noqa: E402


def timed(texts, m, runner):
    sim = BM25Similarity(texts)
    t = time.perf_counter()
    sel = select(sim, m, runner=runner)
    return time.perf_counter() - t, (sel.indices, sel.stages)


def main() -> None:
    from distributed import LocalCluster
    from threadpoolctl import threadpool_limits

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    a = ap.parse_args()
    texts = corpus(a.n)
    with threadpool_limits(1, user_api="blas"):
        base, picks = timed(texts, a.budget, LocalRunner(1))
    print(f"N={a.n} M={a.budget} in-process, 1 thread: {base:.1f}s  load {os.getloadavg()[0]:.1f}")
    for w in a.workers:
        with (
            LocalCluster(
                n_workers=w,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=40,
                env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            ) as cluster,
            DaskRunner(cluster.scheduler_address) as runner,
        ):
            secs, got = timed(texts, a.budget, runner)
        print(
            f"Dask {w} worker(s): {secs:.1f}s = {base / secs:.2f}x the 1-thread baseline, "
            f"load {os.getloadavg()[0]:.1f}, same picks: {got == picks}",
            flush=True,
        )


if __name__ == "__main__":
    main()
