"""Pre-annotate short MOF paragraphs through the real single-slot llama.cpp server of the tests
(llama-cpp-python with SmolLM2-135M-Instruct, ``tests/llama_server.py``) with the LLM defaults:
only the URL, a key and the model name are set, as a user of a local server would.

    python -m bench.local_llm --tasks 12 [--demos similar|random] [--out DIR]

The first 10 paragraphs under 500 characters carry their gold entities (the demonstrations, k=3,
no quality check); the next ``--tasks`` are pre-annotated. Prints the load average before and
after, the wall time, the CLI's ``LLM usage`` line (calls, retries, failures, loops cut, the
concurrency in use) and each failed task's reason. The output JSONL is kept in DIR for
``bench.demos_ablation``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.data import mof_records
from tests.llama_server import MODEL_ALIAS, LlamaServer

ROOT = Path(__file__).resolve().parents[1]
ANNOTATED = 10


def tasks(n: int) -> list[dict]:
    recs = [r for r in mof_records() if len(r["text"]) < 500][: ANNOTATED + n]
    keep = ("start", "end", "label")
    return [
        {"id": r["id"], "text": r["text"]}
        | ({"entities": [{k: e[k] for k in keep} for e in r["entities"]]} if i < ANNOTATED else {})
        for i, r in enumerate(recs)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--demos", choices=("similar", "random"), default="similar")
    ap.add_argument("--out", default=None, help="folder for tasks, output, cache and server log")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="local-llm-"))
    out.mkdir(parents=True, exist_ok=True)
    data, result = out / "tasks.jsonl", out / f"{args.demos}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tasks(args.tasks)))
    with LlamaServer(out) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALLABEL_", "OPENAI_"))}
        env |= {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "local",
                "ALLABEL_LLM_MODEL": MODEL_ALIAS, "PYTHONPATH": str(ROOT)}  # fmt: skip
        argv = [sys.executable, "-m", "alllabel", "prelabel", str(data), "-o", str(result),
                "--k", "3", "--skip-quality", "--demos", args.demos,
                "--cache", str(out / f"cache-{args.demos}.sqlite3"), "--quiet"]  # fmt: skip
        print(f"load before: {os.getloadavg()}", flush=True)
        start = time.monotonic()
        run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=out)
        wall = time.monotonic() - start
    (out / f"{args.demos}.stderr").write_text(run.stderr)
    print(f"load after: {os.getloadavg()}; wall {wall:.0f} s; exit {run.returncode}")
    usage = (
        run.stderr.split("LLM usage: ", 1)[-1].splitlines()[0] if "LLM usage" in run.stderr else ""
    )
    print(f"LLM usage: {usage or run.stderr[-2000:]}")
    rows = [json.loads(line) for line in result.read_text().splitlines()] if result.exists() else []
    failed = [r for r in rows if "prediction" not in r]
    print(f"{len(rows)} tasks, {len(rows) - len(failed)} pre-annotated, {len(failed)} failed")
    for r in failed:
        print(f"  {r['id']}: {r.get('error')}")
    print(f"output in {out}")


if __name__ == "__main__":
    main()
