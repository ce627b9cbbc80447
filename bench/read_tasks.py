"""Which way of reading a project from Label Studio 1.23 is fastest, for what the selection needs:
every task's id, text and ``updated_at``, and the annotations of the annotated tasks (id, task,
result, was_cancelled, updated_at, parent_prediction).

One real Label Studio (PostgreSQL), one project of N tasks, some annotated (a few skipped, a few
started from a prediction). Each way is timed (best of ``--repeat``) and its data compared with
the task list's (``/api/tasks/`` with ``fields=all`` for the annotated tasks, the backend's way
before), so a faster way counts only if it gives the same data.

    .venv/bin/python bench/read_tasks.py                   # 10,000 tasks
    .venv/bin/python bench/read_tasks.py --tasks 2000
"""

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.ls_project import headers, new_project  # noqa: E402
from tests.label_studio import LabelStudioServer  # noqa: E402

ANNOTATED = {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number"}


def task_pages(ls, pid: int, size: int, **extra) -> list[dict]:
    out, page = [], 1
    while True:
        params = {"project": pid, "page_size": size, "page": page, **extra}
        r = requests.get(f"{ls.url}/api/tasks/", headers=headers(ls), params=params, timeout=900)
        if r.status_code == 404:
            break
        r.raise_for_status()
        body = r.json()
        out += body["tasks"]
        if len(out) >= body["total"] or not body["tasks"]:
            break
        page += 1
    return out


def annotated_pages(ls, pid: int, size: int) -> list[dict]:
    query = {"filters": {"conjunction": "and", "items": [{**ANNOTATED, "value": 0}]}}
    return task_pages(ls, pid, size, fields="all", query=json.dumps(query))


def export(ls, pid: int, all_tasks: bool) -> list[dict]:
    params = {"exportType": "JSON", "download_all_tasks": str(all_tasks).lower()}
    url = f"{ls.url}/api/projects/{pid}/export"
    r = requests.get(url, headers=headers(ls), params=params, timeout=900)
    r.raise_for_status()
    return r.json()


def facts(tasks: list[dict], annotated: list[dict]) -> tuple[dict, dict]:
    """What the selection reads: {task: (text, updated_at)}, {annotation: its fields}."""
    rows = {t["id"]: (t["data"].get("text"), t.get("updated_at")) for t in tasks}
    anns = {}
    for t in annotated:
        for a in t.get("annotations") or []:
            keep = (a.get("result"), a.get("was_cancelled"), a.get("updated_at"))
            anns[a["id"]] = (a.get("task") or t["id"], *keep, a.get("parent_prediction"))
    return rows, anns


def parallel(*calls):
    """The calls' results, all requested at once (Label Studio answers on several threads)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def task_pages_parallel(ls, pid: int, size: int, n: int) -> list[dict]:
    reads = [lambda p=p: task_pages_one(ls, pid, size, p) for p in range(1, -(-n // size) + 1)]
    return [t for page in parallel(*reads) for t in page]


def all_at_once(ls, pid: int, n: int) -> tuple[list[dict], list[dict]]:
    reads = [lambda p=p: task_pages_one(ls, pid, 5000, p) for p in range(1, -(-n // 5000) + 1)]
    *pages, annotated = parallel(*reads, lambda: annotated_pages(ls, pid, 5000))
    return [t for page in pages for t in page], annotated


def task_pages_one(ls, pid: int, size: int, page: int) -> list[dict]:
    params = {"project": pid, "page_size": size, "page": page}
    r = requests.get(f"{ls.url}/api/tasks/", headers=headers(ls), params=params, timeout=900)
    r.raise_for_status()
    return r.json()["tasks"]


def ways(ls, pid: int, n: int) -> dict:
    """Each way of reading: a function returning (tasks, annotated tasks with annotations)."""
    return {
        "task list, pages of 5,000 + annotated (fields=all)": lambda: (
            task_pages(ls, pid, 5000),
            annotated_pages(ls, pid, 5000),
        ),
        "task list, one page + annotated (fields=all)": lambda: (
            task_pages(ls, pid, n),
            annotated_pages(ls, pid, n),
        ),
        "task list resolve_uri=false, pages of 5,000 + annotated": lambda: (
            task_pages(ls, pid, 5000, resolve_uri="false"),
            annotated_pages(ls, pid, 5000),
        ),
        "task list, pages of 5,000 and annotated, all at once": lambda: all_at_once(ls, pid, n),
        "task list, pages of 2,500 at once + annotated": lambda: (
            task_pages_parallel(ls, pid, 2500, n),
            annotated_pages(ls, pid, 5000),
        ),
        "task list fields=all, one page (all in one)": lambda: (
            (t := task_pages(ls, pid, n, fields="all")),
            t,
        ),
        "export JSON, all tasks (all in one)": lambda: ((t := export(ls, pid, True)), t),
        "task list pages of 5,000 + export JSON of the annotated": lambda: (
            task_pages(ls, pid, 5000),
            export(ls, pid, False),
        ),
    }


def annotate(ls, pid: int, count: int) -> None:
    """Annotate ``count`` tasks: every 10th skipped, every 7th started from a prediction."""
    h = headers(ls)
    tasks = task_pages(ls, pid, 100)[:count]
    span = {
        "from_name": "label",
        "to_name": "text",
        "type": "labels",
        "value": {"start": 0, "end": 4, "labels": ["precursor"]},
    }
    for i, t in enumerate(tasks):
        body = {"result": [{**span, "id": f"r{i}"}], "was_cancelled": i % 10 == 0}
        if i % 7 == 0:
            pred = {"task": t["id"], "result": [span], "score": 0.5, "model_version": "other"}
            p = requests.post(f"{ls.url}/api/predictions/", headers=h, json=pred, timeout=60)
            body["parent_prediction"] = p.json()["id"]
        url = f"{ls.url}/api/tasks/{t['id']}/annotations/"
        requests.post(url, headers=h, json=body, timeout=60).raise_for_status()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--annotated", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    with LabelStudioServer(Path(tempfile.mkdtemp(prefix="alllabel-read-")) / "ls") as ls:
        pid, took = new_project(ls, "read tasks", a.tasks)
        print(f"imported {a.tasks} tasks in {took:.1f}s")
        annotate(ls, pid, a.annotated)
        todo = ways(ls, pid, a.tasks)
        best = {name: float("inf") for name in todo}
        same = {}
        for _ in range(a.repeat):  # rounds, each way once a round: load drifts alike for all
            for name, read in todo.items():
                t = time.perf_counter()
                got = facts(*read())
                best[name] = min(best[name], time.perf_counter() - t)
                same.setdefault("reference", got)
                same[name] = (
                    "same data" if got == same["reference"] else _diff(same["reference"], got)
                )
        base = best[next(iter(todo))]
        for name in todo:
            print(f"{best[name]:7.2f}s {best[name] / base:5.2f}x  {name}: {same[name]}")
    print(f"load average at end: {os.getloadavg()}")


def _diff(ref: tuple, got: tuple) -> str:
    (rt, ra), (gt, ga) = ref, got
    bad_t = sum(1 for k in rt if rt[k] != gt.get(k)) + len(set(gt) - set(rt))
    bad_a = sum(1 for k in ra if ra[k] != ga.get(k)) + len(set(ga) - set(ra))
    example = next((k for k in ra if ra[k] != ga.get(k)), None)
    shown = f"; e.g. annotation {example}: {ra[example]} vs {ga.get(example)}" if example else ""
    return f"DIFFERS: {bad_t} task(s), {bad_a} annotation(s){shown}"


if __name__ == "__main__":
    main()
