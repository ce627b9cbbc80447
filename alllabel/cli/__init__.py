"""Command line: ``alllabel {select,prelabel,compare,evaluate,demo,status} ...`` (or ``python -m alllabel``).

JSONL records look like ``{"id": ..., "text": "...", "entities": [{"start", "end", "label"}]}``;
a record with an ``entities`` list counts as human-annotated.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from alllabel import env
from alllabel.cli.commands import cmd_demo, cmd_evaluate, cmd_select, cmd_status
from alllabel.cli.common import DEFAULT_BACKEND_URL, EXAMPLE_DATA
from alllabel.cli.compare import VARIANT_KEYS, cmd_compare
from alllabel.cli.prelabel import cmd_prelabel
from alllabel.selection.duplicates import DEFAULT_THRESHOLD
from alllabel.selection.retrieval import DEMONSTRATIONS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="alllabel", description="ALLabel active-learning selection and LLM pre-annotation"
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, llm=True):
        p.add_argument("--text-field", default="text")
        p.add_argument("--k", type=int, default=3, help="demonstrations per query (default 3)")
        p.add_argument("--similarity", default="bm25", choices=["bm25", "sbert"])
        p.add_argument(
            "--sbert-model",
            default=None,
            help="sentence-transformers model (default: bundled all-MiniLM-L6-v2)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if llm:
            p.add_argument(
                "--labels", help="comma-separated label set (default: labels found in the file)"
            )
            p.add_argument("--descriptions", help="JSON file {label: definition} for the prompt")
            p.add_argument(
                "--annotator",
                default="auto",
                choices=["auto", "llm", "projection"],
                help="auto: the LLM when OPENAI_API_KEY/OPENAI_BASE_URL is set, else the offline projection annotator",
            )
            p.add_argument(
                "--model", default=None, help="LLM model (default ALLABEL_LLM_MODEL or gpt-4o)"
            )
            p.add_argument(
                "--base-url",
                default=None,
                help="OpenAI-compatible endpoint (default OPENAI_BASE_URL or OpenAI); the key comes from OPENAI_API_KEY",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                help="seconds per LLM call (default ALLABEL_LLM_TIMEOUT or 60)",
            )
            p.add_argument(
                "--concurrency",
                type=int,
                default=None,
                help="parallel LLM calls (default ALLABEL_LLM_CONCURRENCY or 4)",
            )
            p.add_argument(
                "--cache",
                default=os.environ.get("ALLABEL_LLM_CACHE", "data/llm_cache.sqlite3"),
                help="SQLite LLM cache ('' for none)",
            )
            p.add_argument(
                "--max-prompt-tokens",
                type=int,
                default=None,
                help="token budget of one prompt (default ALLABEL_MAX_PROMPT_TOKENS or 8000)",
            )

    p = sub.add_parser("select", help="choose the tasks humans should annotate, in queue order")
    p.add_argument("input")
    p.add_argument("-o", "--output")
    p.add_argument("--budget", default="5%", help="task count (50) or fraction (0.05, 5%%)")
    p.add_argument("--ratios", default="1:3:1")
    p.add_argument("--order", default="DSU", help="DSU (paper), SDU or SUD")
    p.add_argument("--method", default="allabel", choices=["allabel", "random", "coreset"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep-annotated",
        action="store_true",
        help="records with 'entities' are already annotated: plan around them",
    )
    p.add_argument(
        "--paper-exact",
        action="store_true",
        help="offer every task, as in the paper (no near-duplicate or length-outlier exclusion)",
    )
    p.add_argument("--keep-duplicates", action="store_true", help="offer near-duplicates too")
    p.add_argument("--keep-outliers", action="store_true", help="offer tasks of extreme length too")
    p.add_argument(
        "--duplicate-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="character 5-gram Jaccard at which two tasks are near-duplicates (default %(default)s)",
    )
    p.add_argument(
        "--dask-scheduler",
        default=os.environ.get("ALLABEL_DASK_SCHEDULER") or None,
        help="run the scan on this Dask scheduler (tcp://host:port)",
    )
    common(p, llm=False)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "prelabel", help="pre-annotate unlabeled records (or a Label Studio project)"
    )
    p.add_argument("input", nargs="?")
    p.add_argument("-o", "--output", default="prelabels.jsonl")
    p.add_argument(
        "--pool",
        help="a 'select' output: only those records are demonstrations; the rest are pre-annotated",
    )
    p.add_argument(
        "--project",
        type=int,
        help="pre-annotate this Label Studio project now (LABEL_STUDIO_URL/API_KEY)",
    )
    p.add_argument("--dry-run", action="store_true", help="estimate tokens and cost, call nothing")
    p.add_argument(
        "--max-cost",
        type=float,
        default=env.number("ALLABEL_MAX_COST_USD", None, minimum=0, unit=" (US$)"),
        help="stop before spending more than this many US$ (default ALLABEL_MAX_COST_USD); the quality check counts too; "
        "cached answers count at their price, so a higher cap resumes",
    )
    p.add_argument(
        "--min-f1",
        type=float,
        default=env.fraction("ALLABEL_MIN_F1", None),
        help="hold the run when the leave-one-out F1 (paper metric, 0..1) is below this (default ALLABEL_MIN_F1)",
    )
    p.add_argument(
        "--min-span-score",
        type=float,
        default=env.fraction("ALLABEL_MIN_SPAN_SCORE", None),
        help="drop spans scored below this (0..1; default ALLABEL_MIN_SPAN_SCORE)",
    )
    p.add_argument(
        "--skip-quality", action="store_true", help="no leave-one-out quality check before the run"
    )
    p.add_argument(
        "--batch",
        action="store_true",
        help="use the Batch API (half price, answers within 24 h; also ALLABEL_LLM_BATCH=1)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=None,
        help="seconds to wait for a batch (default: until it ends); re-run to collect it later",
    )
    p.add_argument(
        "--run-key",
        help="name of this run's batches (default: the input file's path), so a re-run resumes them",
    )
    p.add_argument(
        "--carry-duplicates",
        action="store_true",
        help="give near-duplicates of annotated records that annotation, projected (no LLM call), "
        "as the backend does",
    )
    p.add_argument(
        "--duplicate-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="character 5-gram Jaccard at which two tasks are near-duplicates (default %(default)s)",
    )
    p.add_argument(
        "--demos",
        default="similar",
        choices=DEMONSTRATIONS,
        help="the k demonstrations: the most similar annotated records (paper) or random ones",
    )
    p.add_argument("--limit", type=int, help="pre-annotate only the first N records to do")
    p.add_argument("--ids", help="pre-annotate only these record ids (comma-separated)")
    common(p)
    p.set_defaults(func=cmd_prelabel)

    p = sub.add_parser(
        "evaluate", help="the paper's protocol: F1 vs pool size for ALLabel and baselines"
    )
    p.add_argument("input")
    p.add_argument("--out-dir", default="out/evaluation")
    p.add_argument("--pool-sizes", help="comma-separated (default 10,15,...,60)")
    p.add_argument(
        "--methods",
        default="allabel,random,coreset",
        help="any of allabel (paper-exact), allabel-screened (no near-duplicates/outliers offered, near-duplicates projected), random, coreset",
    )
    p.add_argument(
        "--duplicate-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="for allabel-screened (default %(default)s)",
    )
    p.add_argument("--seeds", type=int, default=5, help="runs of the random and core-set baselines")
    p.add_argument(
        "--choices-field",
        help='a classification set: the field holding each record\'s answer, e.g. "choices": ["positive"]',
    )
    p.add_argument(
        "--multiple", action="store_true", help="with --choices-field: several values may apply"
    )
    p.add_argument(
        "--demos",
        default="similar",
        help="demonstrations: similar (the paper's retrieval), random, or similar,random for the "
        "paper's retrieval ablation side by side (default similar)",
    )
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="leave-one-out F1, US$ per task and latency of two or more models or prompt settings",
        description='Each --variant "key=value,..." is one LLM set-up; keys: '
        + ", ".join(VARIANT_KEYS)
        + '. E.g. --variant "model=gpt-4o" --variant "model=gpt-4o-mini,k=5" --variant '
        '"name=local,model=llama,base_url=http://127.0.0.1:8080/v1,api_key_env=LOCAL_KEY".',
    )
    p.add_argument("input", help="JSONL records; those with 'entities' are scored")
    p.add_argument("--variant", action="append", required=True, help='e.g. "model=gpt-4o-mini,k=5"')
    p.add_argument(
        "--max-cost",
        type=float,
        default=env.number("ALLABEL_MAX_COST_USD", None, minimum=0, unit=" (US$)"),
        help="US$ for the whole comparison, every billed call counted (default ALLABEL_MAX_COST_USD)",
    )
    p.add_argument("--json", help="also write the reports to this JSON file")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the whole loop offline on the bundled MOF sample")
    p.add_argument("input", nargs="?", default=str(EXAMPLE_DATA))
    p.add_argument("--budget", default="10%")
    p.add_argument("--out-dir", default="out/demo")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "status", help="progress of the running backend's projects (its GET /status)"
    )
    p.add_argument(
        "--url",
        default=DEFAULT_BACKEND_URL,
        help=f"the backend (default {DEFAULT_BACKEND_URL}); basic auth from BASIC_AUTH_USER/BASIC_AUTH_PASS",
    )
    p.add_argument("--project", type=int, help="only this Label Studio project")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.set_defaults(func=cmd_status)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # defaults come from the environment, read strictly
    except env.SettingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "cache", None) == "":
        args.cache = None
    for name in ("min_f1", "min_span_score"):
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            print(
                f"error: --{name.replace('_', '-')} is a fraction between 0 and 1, got {value}",
                file=sys.stderr,
            )
            return 2
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
