"""The Label Studio set-up the connect benchmarks share: a project of N corpus tasks on a real
Label Studio (``tests.label_studio.LabelStudioServer``), its import timed apart."""

import time

import requests

from bench.corpus import corpus

CONFIG = (
    '<View><Labels name="label" toName="text"><Label value="precursor"/>'
    '<Label value="solvent"/></Labels><Text name="text" value="$text"/></View>'
)
IMPORT_CHUNK = 2000  # tasks per import request (Label Studio parses each request in memory)


def headers(ls) -> dict:
    return {"Authorization": f"Token {ls.token}"}


def new_project(ls, title: str, tasks: int, config: str = CONFIG) -> tuple[int, float]:
    """A project holding ``tasks`` corpus texts: (its id, seconds the import took)."""
    h = headers(ls)
    body = {"title": title, "label_config": config}
    r = requests.post(f"{ls.url}/api/projects/", headers=h, json=body, timeout=60)
    r.raise_for_status()
    pid = r.json()["id"]
    texts = corpus(tasks)
    t = time.perf_counter()
    for i in range(0, len(texts), IMPORT_CHUNK):
        requests.post(
            f"{ls.url}/api/projects/{pid}/import",
            headers=h,
            json=[{"text": x} for x in texts[i : i + IMPORT_CHUNK]],
            timeout=600,
        ).raise_for_status()
    return pid, time.perf_counter() - t
