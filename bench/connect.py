"""Connect-to-ordered time, and what Label Studio serves while a big project connects.

One real Label Studio (from .venv-ls, PostgreSQL as in production), two projects with the same N
tasks (import time reported apart). Each is connected to a backend process of its own: first
the *baseline* code (``--baseline``, a git ref, default ``main``: extracted with ``git archive``
into a temporary folder), then this tree. During each connect an annotator client asks
``/api/projects/ID/next`` ("Label All Tasks"), submits an empty annotation and takes the next
task ``--pace`` seconds later, from the moment the connect starts; a task served before Label Studio serves the
ALLabel order (sampling "Uncertainty sampling" and the project's model version ours, read from
Label Studio every 0.2 s), or not in the ALLabel queue, is counted as served out of order. The
first task is served before the model is even added (the client starts with the connect): the
count "after the model was added" leaves out what was served before ``POST /api/ml`` returned,
what a user sees who adds the model and then clicks "Label All Tasks".

    .venv/bin/python bench/connect.py                      # 10,000 tasks
    .venv/bin/python bench/connect.py --tasks 2000 --baseline e7d80e6
"""

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.corpus import corpus  # noqa: E402
from bench.ls_project import headers, new_project  # noqa: E402
from tests.label_studio import LabelStudioServer, free_port  # noqa: E402

MV = "alllabel"
SAMPLING = "Uncertainty sampling"
# The backend process: this tree's or the baseline's code, whichever PYTHONPATH names.
SERVE = """
import sys, threading
from pathlib import Path
from werkzeug.serving import make_server
from _wsgi import create_app
from alllabel.backend.ls_client import LabelStudioAPI
from alllabel.backend.settings import Settings
from alllabel.llm.client import LLMConfig
from model import ALLabelBackend
url, token, state, port = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
# numba compiles the kernels on first use and caches them next to their source: a freshly
# extracted baseline would pay that inside its connect, this tree not. Both compile them first.
import json
from alllabel.selection.screening import screen
texts = json.loads(Path(sys.argv[5]).read_text())
screen(texts)
from alllabel.selection.similarity import BM25Similarity
from alllabel.selection.stages import select
select(BM25Similarity(texts), 20)  # the one-off selection's kernels
try:
    from alllabel.selection.replan import Planner
    Planner(texts, budget=20).select(20)  # the kept planner's
except ImportError:  # code from before the Planner
    pass
settings = Settings(state_dir=state, model_version="alllabel", annotator="projection")
backend = ALLabelBackend(settings, ls_factory=lambda: LabelStudioAPI(url, token), llm_config=LLMConfig())
make_server("127.0.0.1", port, create_app(backend), threaded=True).serve_forever()
"""


def baseline_tree(ref: str, into: Path) -> Path:
    """The baseline's files (``git archive``), with this checkout's virtual environments."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(into, filter="data")
    return into


class Annotator(threading.Thread):
    """'Label All Tasks' as fast as Label Studio answers: /next, then an empty annotation."""

    def __init__(self, url: str, headers: dict, pid: int, pace: float):
        super().__init__(daemon=True)
        self.url, self.h, self.pid, self.pace = url, headers, pid, pace
        self.served: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            r = requests.get(f"{self.url}/api/projects/{self.pid}/next", headers=self.h, timeout=60)
            if r.status_code != 200:
                time.sleep(0.2)
                continue
            task = r.json()["id"]
            self.served.append((time.perf_counter(), task))
            requests.post(
                f"{self.url}/api/tasks/{task}/annotations/",
                headers=self.h,
                json={"result": [], "project": self.pid},
                timeout=60,
            ).raise_for_status()
            self.stop.wait(self.pace)


def connect(
    ls, h, pid, tree: Path, work: Path, label: str, pace: float, after: float, limit: float
):
    """Connect one backend process (code from ``tree``) and measure; returns the figures."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    warm = work / "warm-up.json"
    warm.write_text(json.dumps(corpus(300, seed=1)))
    args = [sys.executable, "-c", SERVE, ls.url, ls.token, str(work / f"state-{label}"), str(port)]
    args.append(str(warm))
    log = open(work / f"backend-{label}.log", "w")
    proc = subprocess.Popen(args, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        backend = f"http://127.0.0.1:{port}"
        for _ in range(3000):  # the warm-up compiles first
            try:
                if requests.get(f"{backend}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        annotator = Annotator(ls.url, h, pid, pace)
        t0 = time.perf_counter()
        annotator.start()
        body = {"project": pid, "url": backend, "title": MV}
        requests.post(f"{ls.url}/api/ml", headers=h, json=body, timeout=60).raise_for_status()
        returned = time.perf_counter() - t0
        ordered = None
        while time.perf_counter() - t0 < limit:
            p = requests.get(f"{ls.url}/api/projects/{pid}/", headers=h, timeout=60).json()
            if ordered is None and p["sampling"] == SAMPLING and p["model_version"] == MV:
                ordered = time.perf_counter() - t0
            if ordered is not None and time.perf_counter() - t0 > ordered + after:
                break  # what is served after the switch was watched long enough
            time.sleep(0.2)
        st = requests.get(f"{backend}/status", timeout=60).json()["projects"][0]
        annotator.stop.set()
        annotator.join(60)
        preds = requests.get(
            f"{ls.url}/api/predictions/", headers=h, params={"project": pid}, timeout=120
        ).json()
        queue = {x["task"] for x in preds if x["model_version"] == MV and x["score"] < 1e-3}
        served = annotator.served
        early = [t for at, t in served if ordered is None or at - t0 < ordered]
        outside = [t for at, t in served if t not in queue and t not in early]
        # What a user sees who adds the model, then starts labelling (POST /api/ml has returned).
        after_add = [t for at, t in served if at - t0 >= returned and t in early]
        return {
            "label": label,
            "connect_returned_s": returned,
            "ordered_s": ordered,
            "queue_pushed_at_end": f"{st['queue']['pushed']} of {st['queue']['selected']}",
            "queue": len(queue),
            "served": len(served),
            "served_before_ordered": len(early),
            "served_before_ordered_after_add": len(after_add),
            "served_outside_queue_after": len(outside),
            "status_order": st.get("order"),
            "annotated_from_queue": st.get("annotated_from_queue"),
        }
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def out_of_order(r: dict) -> str:
    bad = r["served_before_ordered"] + r["served_outside_queue_after"]
    return f"{bad} of {r['served']} (after the model was added: {r['served_before_ordered_after_add']})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--baseline", default="main", help="git ref to compare with, or 'none'")
    ap.add_argument("--this-first", action="store_true", help="connect this tree first")
    ap.add_argument("--db", default="postgresql", choices=("postgresql", "sqlite"))
    ap.add_argument("--pace", type=float, default=2.0, help="seconds an annotator takes a task")
    ap.add_argument("--after", type=float, default=10.0, help="seconds watched after the switch")
    ap.add_argument("--limit", type=float, default=900.0, help="seconds a connect may take")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop Label Studio on the way out
    work = Path(tempfile.mkdtemp(prefix="alllabel-connect-"))
    trees = {"this tree": ROOT}
    if a.baseline != "none":
        base = baseline_tree(a.baseline, work / "baseline")
        for name in (".venv", ".venv-ls", ".venv-llm", ".cache"):
            if (ROOT / name).exists():
                (base / name).symlink_to(ROOT / name)
        trees = {"baseline": base, **trees}
    if a.this_first:  # the second connect may find Label Studio and PostgreSQL warmer
        trees = dict(reversed(trees.items()))
    print(f"load average at start: {os.getloadavg()}")
    with LabelStudioServer(work / "ls", db=a.db) as ls:
        h = headers(ls)
        pids = {}
        for label in trees:
            pids[label], took = new_project(ls, f"connect {label}", a.tasks)
            print(f"{label}: imported {a.tasks} tasks in {took:.1f}s", flush=True)
        rows = {
            label: connect(ls, h, pids[label], tree, work, label, a.pace, a.after, a.limit)
            for label, tree in trees.items()
        }
    for r in rows.values():
        print(r)
    n = rows["this tree"]
    line = f"\n{a.tasks} tasks ({a.db}): connect to ordered {n['ordered_s']:.1f}s, served out of "
    line += f"ALLabel order {out_of_order(n)}"
    if "baseline" in rows:
        b = rows["baseline"]
        line += (
            f"; baseline {a.baseline}: {b['ordered_s']:.1f}s ({n['ordered_s'] / b['ordered_s']:.2f}x), "
            f"{out_of_order(b)}; {' -> '.join(trees)}"
        )
    print(f"{line}; load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
