"""Bulk pre-annotation throughput: the CLI against a local fake LLM with a fixed latency.

A fake OpenAI server (tests/fake_openai.py: TCP_NODELAY, HTTP/1.1 keep-alive, oracle replies
with logprobs) runs in its own process and answers every chat call after ``--latency`` seconds.
For each concurrency C the CLI (``python -m alllabel prelabel``, fresh SQLite cache, the real
openai client) pre-annotates ``--tasks`` MOF paragraphs from a pool of ``--pool`` annotated ones.

The bound is C / latency tasks/s (C calls always in flight, zero client time). Printed per C:

* ``e2e``: tasks / wall time of the whole CLI process (start-up included), as a % of the bound;
* ``calls``: tasks / (last reply - first request), start-up excluded, as a % of the bound;
* ``attainable``: the best any client can do with whole rounds, ceil(tasks / C) x latency;
* start-up (process start -> first request), client CPU ms per task (user + sys of the whole CLI
  process, start-up included), and the fake server's own CPU per call (it shares the machine).

    .venv/bin/python bench/prelabel.py                         # 600 tasks at C = 1, 4, 16, 64
    .venv/bin/python bench/prelabel.py --concurrency 64 --profile out/prelabel.prof

Data: examples/mof_zhang2024.jsonl (MIT (c) 2023 zw-SIMM).
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOF = ROOT / "examples" / "mof_zhang2024.jsonl"


def _get(url: str, method: str = "GET") -> dict:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--pool", type=int, default=30, help="annotated records used as demonstrations")
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument(
        "--profile",
        help="run the CLI under cProfile and write the stats here (last concurrency only)",
    )
    ap.add_argument("--cli-args", default="", help="extra arguments for the prelabel command")
    ap.add_argument(
        "--prefix",
        default="",
        help="command prefix for the CLI run, e.g. 'py-spy record -o prof.svg --'",
    )
    ap.add_argument(
        "--data", default=str(MOF), help="the MOF JSONL (default examples/mof_zhang2024.jsonl)"
    )
    ap.add_argument(
        "--code",
        default=str(ROOT),
        help="directory whose alllabel package the CLI runs (e.g. an older checkout, for a baseline)",
    )
    args = ap.parse_args()

    records = [json.loads(line) for line in Path(args.data).open(encoding="utf-8")]
    if args.pool + args.tasks > len(records):
        raise SystemExit(f"the MOF data has {len(records)} records: lower --tasks or --pool")
    work = Path(tempfile.mkdtemp(prefix="alllabel-bench-"))
    data = work / "tasks.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i, r in enumerate(records[: args.pool + args.tasks]):
            rec = {"id": i, "text": r["text"]}
            if i < args.pool:
                rec["entities"] = [
                    {k: e[k] for k in ("start", "end", "label")} for e in r["entities"]
                ]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    gold = work / "gold.jsonl"
    with gold.open("w", encoding="utf-8") as f:
        for r in records[: args.pool + args.tasks]:
            f.write(
                json.dumps(
                    {
                        "text": r["text"],
                        "entities": [
                            {k: e[k] for k in ("start", "end", "label")} for e in r["entities"]
                        ],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_openai",
            "--latency",
            str(args.latency),
            "--gold",
            str(gold),
            "--logprob",
            "-0.05",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = server.stdout.readline().strip()
        env = {
            **os.environ,
            "OPENAI_BASE_URL": base,
            "OPENAI_API_KEY": "bench",
            "PYTHONPATH": os.pathsep.join(filter(None, [args.code, os.environ.get("PYTHONPATH")])),
        }
        print(
            f"{args.tasks} tasks, {args.pool} demonstrations, latency {args.latency} s; {os.cpu_count()} CPUs, load before: {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'C':>3} {'bound/s':>8} {'tasks/s':>8} {'e2e':>6} {'calls':>6} {'attainable':>10} {'start-up s':>10} {'CPU ms/task':>11} {'fake ms/call':>12} {'in flight':>9}"
        )
        levels = [int(c) for c in args.concurrency.split(",")]
        for n, c in enumerate(levels):
            _get(base + "/_reset", "POST")
            fake_cpu = _get(base + "/_stats")["cpu_s"]
            cache = work / f"cache-{c}.sqlite3"
            cmd = [*args.prefix.split(), sys.executable]
            if args.profile and n == len(levels) - 1:
                cmd += ["-m", "cProfile", "-o", args.profile]
            cmd += [
                "-m",
                "alllabel",
                "prelabel",
                str(data),
                "-o",
                str(work / f"out-{c}.jsonl"),
                "--cache",
                str(cache),
                "--concurrency",
                str(c),
                "--quiet",
                "--skip-quality",
                *args.cli_args.split(),
            ]  # the bulk calls only
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
            wall = time.time() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise SystemExit(f"the CLI failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            stats = _get(base + "/_stats")
            if stats["requests"] != args.tasks:
                raise SystemExit(
                    f"expected {args.tasks} LLM calls, the fake saw {stats['requests']}"
                )
            calls = stats["last_response_at"] - stats["first_request_at"]
            bound = c / args.latency
            attainable = args.tasks / (math.ceil(args.tasks / c) * args.latency)
            cpu = (
                (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                / args.tasks
                * 1000
            )
            print(
                f"{c:>3} {bound:>8.1f} {args.tasks / wall:>8.1f} {100 * args.tasks / wall / bound:>5.1f}% {100 * args.tasks / calls / bound:>5.1f}%"
                f" {100 * attainable / bound:>9.1f}% {stats['first_request_at'] - t0:>10.2f} {cpu:>11.2f}"
                f" {(stats['cpu_s'] - fake_cpu) / args.tasks * 1000:>12.2f} {stats['max_in_flight']:>9}",
                flush=True,
            )
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
