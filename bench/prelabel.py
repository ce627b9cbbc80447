"""Bulk pre-annotation throughput: the CLI against a local fake LLM with a fixed latency.

A fake OpenAI server (tests/fake_openai.py: TCP_NODELAY, HTTP/1.1 keep-alive, oracle replies
with logprobs) runs in its own process and answers every chat call after ``--latency`` seconds.
For each concurrency C the CLI (``python -m alllabel prelabel``, fresh SQLite cache, the real
openai client) pre-annotates ``--tasks`` MOF paragraphs from a pool of ``--pool`` annotated ones.

The bound is C / latency tasks/s (C calls always in flight, zero client time). Printed per C,
the median of ``--repeat`` runs (each run's figures in ``--json``):

* ``run``: tasks / (first request -> last push), the bulk run's end-to-end rate, as a % of the
  bound. The CLI's push is its output file (the last write to it, the JSONL of every result): this
  bench covers the calls, reading the replies and writing the results, not a push to Label Studio
  (the backend's bulk run pushes through ``alllabel/backend/bulk.py``, see tests/test_e2e_bulk.py);
* ``e2e``: tasks / wall time of the whole CLI process (start-up and exit included);
* ``calls``: tasks / (last reply - first request), as a % of the bound;
* ``attainable``: the best any client can do with whole rounds, ceil(tasks / C) x latency;
* start-up (process start -> first request), client CPU ms per task (user + sys of the whole CLI
  process, start-up included), the fake server's own CPU per call (it shares the machine), the
  most calls the fake saw in flight and the lowest concurrency the client's adaptive limit took.

``--baseline DIR|REV`` runs another checkout's code (a directory, or a git revision of this
repository, extracted with ``git archive``) in the same session, alternating with this one at each
repetition, so both meet the same load.

    .venv/bin/python bench/prelabel.py                         # 600 tasks at C = 1, 4, 16, 64
    .venv/bin/python bench/prelabel.py --concurrency 16,64 --repeat 5 --baseline main
    .venv/bin/python bench/prelabel.py --concurrency 64 --profile out/prelabel.prof

Data: examples/mof_zhang2024.jsonl (MIT (c) 2023 zw-SIMM).
"""

import argparse
import json
import math
import os
import resource
import statistics
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


def _run(args, base: str, work: Path, data: Path, c: int, code: str, profile) -> dict:
    """One CLI run at concurrency ``c`` with ``code``'s alllabel: its figures."""
    _get(base + "/_reset", "POST")
    fake_cpu = _get(base + "/_stats")["cpu_s"]
    cache, out = work / f"cache-{c}.sqlite3", work / f"out-{c}.jsonl"
    for f in (cache, out):
        f.unlink(missing_ok=True)
    env = {
        **os.environ,
        "OPENAI_BASE_URL": base,
        "OPENAI_API_KEY": "bench",
        # The fake stands for a cloud endpoint (fixed latency, parallel); on loopback it would
        # count as local and get streamed replies, a local server's default (ALLABEL_LLM_STREAM).
        "ALLABEL_LLM_STREAM": os.environ.get("ALLABEL_LLM_STREAM", "0"),
        "PYTHONPATH": os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")])),
    }
    cmd = [*args.prefix.split(), sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += ["-m", "alllabel", "prelabel", str(data), "-o", str(out), "--cache", str(cache)]
    cmd += ["--concurrency", str(c), "--quiet", "--skip-quality", *args.cli_args.split()]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"the CLI failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    stats = _get(base + "/_stats")
    if stats["requests"] != args.tasks:
        raise SystemExit(f"expected {args.tasks} LLM calls, the fake saw {stats['requests']}")
    usage = next(x for x in proc.stderr.splitlines() if x.startswith("LLM usage: "))
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {
        "wall_s": wall,
        "run_s": out.stat().st_mtime - stats["first_request_at"],  # first call -> last push
        "calls_s": stats["last_response_at"] - stats["first_request_at"],
        "startup_s": stats["first_request_at"] - t0,
        "cpu_ms_task": cpu / args.tasks * 1000,
        "fake_ms_call": (stats["cpu_s"] - fake_cpu) / args.tasks * 1000,
        "in_flight": stats["max_in_flight"],
        "lowest": json.loads(usage.split(": ", 1)[1])["concurrency_lowest"],
        "load": os.getloadavg()[0],
    }


def _archive(rev: str, into: Path) -> str:
    """``rev``'s alllabel package, extracted from this repository into ``into``."""
    into.mkdir()
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "alllabel"], capture_output=True, check=False
    )
    if tar.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a directory nor a git revision ({tar.stderr!r})")
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar.stdout, check=True)
    return str(into)


def _print(name: str, c: int, args, runs: list[dict]) -> None:
    """The median of ``runs``, rates as % of the bound."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    bound = c / args.latency
    attainable = args.tasks / (math.ceil(args.tasks / c) * args.latency)

    def pct(key: str) -> str:
        return f"{100 * args.tasks / med(key) / bound:>5.1f}%"

    print(
        f"{name:>8} {c:>3} {bound:>8.1f} {pct('run_s')} {pct('wall_s')} {pct('calls_s')}"
        f" {100 * attainable / bound:>9.1f}% {med('startup_s'):>10.2f} {med('cpu_ms_task'):>11.2f}"
        f" {med('fake_ms_call'):>12.2f} {max(r['in_flight'] for r in runs):>9}"
        f" {min(r['lowest'] for r in runs):>6}",
        flush=True,
    )


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
    ap.add_argument(
        "--baseline", help="a second checkout or a git revision, run alternately with --code"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per C (and code); medians shown")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()

    records = [json.loads(line) for line in Path(args.data).open(encoding="utf-8")]
    if args.pool + args.tasks > len(records):
        raise SystemExit(f"the MOF data has {len(records)} records: lower --tasks or --pool")
    work = Path(tempfile.mkdtemp(prefix="alllabel-bench-"))
    if args.baseline and not Path(args.baseline).is_dir():
        args.baseline = _archive(args.baseline, work / "baseline")
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
        print(
            f"{args.tasks} tasks, {args.pool} demonstrations, latency {args.latency} s, median of"
            f" {args.repeat}; {os.cpu_count()} CPUs, load before: {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'code':>8} {'C':>3} {'bound/s':>8} {'run':>6} {'e2e':>6} {'calls':>6} {'attainable':>10}"
            f" {'start-up s':>10} {'CPU ms/task':>11} {'fake ms/call':>12} {'in flight':>9} {'lowest':>6}"
        )
        codes = [("this", args.code)] + ([("baseline", args.baseline)] if args.baseline else [])
        levels = [int(c) for c in args.concurrency.split(",")]
        runs: dict = {}
        for c in levels:
            for rep in range(args.repeat):
                for name, code in codes:
                    last = c == levels[-1] and rep == args.repeat - 1 and name == "this"
                    one = _run(args, base, work, data, c, code, profile=last and args.profile)
                    runs.setdefault((name, c), []).append(one)
            for name, _ in codes:
                _print(name, c, args, runs[(name, c)])
        print(f"load after: {os.getloadavg()[0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({f"{n} C={c}": r for (n, c), r in runs.items()}))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
