"""Command line: ``alllabel {select,prelabel,evaluate,demo,status} ...`` (or ``python -m alllabel``).

JSONL records look like ``{"id": ..., "text": "...", "entities": [{"start", "end", "label"}]}``;
a record with an ``entities`` list counts as human-annotated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from alllabel.backend.settings import parse_budget, parse_ratios, resolve_budget
from alllabel.evaluation.protocol import (
    DEFAULT_POOL_SIZES,
    evaluate,
    leave_one_out,
    quality_gate,
    score_pool,
    write_reports,
)
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.prelabel.annotators import (
    LLMAnnotator,
    ProjectionAnnotator,
    estimate_run,
    plan_run,
    prelabel,
)
from alllabel.prelabel.prompt import LabelSchema
from alllabel.selection.blocks import make_runner
from alllabel.selection.duplicates import DEFAULT_THRESHOLD
from alllabel.selection.screening import screen
from alllabel.selection.similarity import make_similarity
from alllabel.selection.stages import select
from alllabel.text.jsonl import read_jsonl, texts_of, write_jsonl


def _example_data() -> Path:
    """The bundled MOF sample: alllabel/examples/ when installed from a wheel, examples/ in a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "examples" / "mof_sample.jsonl"
    return installed if installed.exists() else here.parent / "examples" / "mof_sample.jsonl"


EXAMPLE_DATA = _example_data()
DEFAULT_BACKEND_URL = "http://127.0.0.1:9090"


class Bar:
    """A tqdm bar per stage for select()'s progress callback."""

    def __init__(self, enabled: bool):
        self.enabled, self.bars = enabled, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="item", leave=False)
        bar.update(done - bar.n)

    def close(self):
        for b in self.bars.values():
            b.close()


def _spans(record: dict, i: int) -> list[dict] | None:
    ents = record.get("entities")
    if ents is None:
        return None
    if not isinstance(ents, list):
        raise ValueError(f"record #{i}: 'entities' must be a list")
    text = record["text"]
    out = []
    for e in ents:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("start"), int)
            and isinstance(e.get("end"), int)
            and isinstance(e.get("label"), str)
        ):
            raise ValueError(
                f"record #{i}: every entity needs integer start/end and a label, got {e!r}"
            )
        if not 0 <= e["start"] < e["end"] <= len(text):
            raise ValueError(
                f"record #{i}: entity offsets {e['start']}..{e['end']} are outside the text (length {len(text)})"
            )
        out.append({"start": e["start"], "end": e["end"], "label": e["label"]})
    return out


def _labels(args, records) -> list[str]:
    if args.labels:
        return [x.strip() for x in args.labels.split(",") if x.strip()]
    labels = sorted({e["label"] for r in records for e in (r.get("entities") or [])})
    if not labels:
        raise ValueError("no labels: pass --labels A,B,C or give some records an 'entities' list")
    return labels


def _descriptions(path: str | None, labels: list[str]) -> dict[str, str]:
    if not path:
        return {}
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k: v for k, v in d.items() if k in labels}


def _annotator(args, schema: LabelSchema):
    config = LLMConfig.from_env(
        model=args.model,
        concurrency=args.concurrency,
        base_url=args.base_url,
        timeout=args.timeout,
        max_prompt_tokens=args.max_prompt_tokens,
        batch=getattr(args, "batch", None) or None,
    )
    if args.annotator == "projection" or (args.annotator == "auto" and not config.configured):
        print(
            "annotator: projection-offline (no LLM configured; set OPENAI_API_KEY for the LLM)",
            file=sys.stderr,
        )
        return ProjectionAnnotator(schema), 1
    cache = LLMCache(args.cache) if args.cache else None
    annotator = LLMAnnotator(LLMClient(config, cache), schema)
    print(f"annotator: {annotator.name} at {config.base_url or 'api.openai.com'}", file=sys.stderr)
    return annotator, config.concurrency


def _usage(annotator) -> None:
    if isinstance(annotator, LLMAnnotator):
        c = annotator.client
        print("LLM usage: " + json.dumps(c.usage.as_dict(c.config.prices())), file=sys.stderr)


def _env_number(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else None


def cmd_select(args) -> int:
    records = read_jsonl(args.input)
    texts = texts_of(records, args.text_field)
    pre = (
        [i for i, r in enumerate(records) if r.get("entities") is not None]
        if args.keep_annotated
        else []
    )
    b = parse_budget(args.budget)
    budget = (
        b if isinstance(b, int) else resolve_budget(b, len(texts) - len(pre))
    )  # a count above N is an error
    sim = make_similarity(texts, args.similarity, model=args.sbert_model)
    exclude = None
    if not args.paper_exact and not (args.keep_duplicates and args.keep_outliers):
        sc = screen(
            texts,
            chosen=pre,
            duplicates=not args.keep_duplicates,
            threshold=args.duplicate_threshold,
            outliers=not args.keep_outliers,
        )
        exclude = sc.excluded
        counts = sc.summary()
        print(
            f"not offered to humans: {counts['near_duplicates']} near-duplicate(s), {counts['length_outliers']} length outlier(s)"
            " (--paper-exact offers every task)",
            file=sys.stderr,
        )
        for i, why in sorted(sc.reasons.items()):
            logging.getLogger("alllabel").info("task %s: %s", records[i].get("id", i), why)
    bar = Bar(not args.quiet)
    sel = select(
        sim,
        budget,
        k=args.k,
        ratios=parse_ratios(args.ratios),
        order=args.order,
        pre_chosen=pre,
        exclude=exclude,
        method=args.method,
        seed=args.seed,
        progress=bar,
        runner=make_runner(args.dask_scheduler),
    )
    bar.close()
    out = [{**r, "id": records[r["index"]].get("id", r["index"])} for r in sel.as_records()]
    if args.output:
        write_jsonl(args.output, out)
        print(f"wrote {len(out)} selected task(s) in queue order to {args.output}", file=sys.stderr)
    else:
        for r in out:
            print(json.dumps(r, ensure_ascii=False))
    return 0


# Exit codes of prelabel: 0 all done, 1 some failed, 3 some held (cost cap or a batch still
# running: run again), 4 held by the quality check (--min-f1), 2 usage or setup errors.
EXIT_FAILED, EXIT_HELD, EXIT_QUALITY = 1, 3, 4


def cmd_prelabel(args) -> int:
    if args.project is not None:
        return _prelabel_project(args)
    if not args.input:
        raise ValueError("give a JSONL file, or --project ID for a Label Studio project")
    records = read_jsonl(args.input)
    texts = texts_of(records, args.text_field)
    spans = [_spans(r, i) for i, r in enumerate(records)]
    if args.pool:
        pool_ids = {r["id"] for r in read_jsonl(args.pool)}
        gold = {i: spans[i] or [] for i, r in enumerate(records) if r.get("id", i) in pool_ids}
        if len(gold) != len(pool_ids):
            raise ValueError(
                f"{len(pool_ids) - len(gold)} id(s) in {args.pool} are not in {args.input}"
            )
    else:
        gold = {i: s for i, s in enumerate(spans) if s is not None}
    queries = [i for i in range(len(texts)) if i not in gold]
    labels = _labels(args, records)
    schema = LabelSchema(labels, _descriptions(args.descriptions, labels))
    annotator, concurrency = _annotator(args, schema)
    llm = isinstance(annotator, LLMAnnotator)
    sim = make_similarity(texts, args.similarity, model=args.sbert_model)
    run_key = args.run_key or f"cli:{Path(args.input).resolve()}"
    check = not args.skip_quality and len(gold) >= 2
    run = plan_run(texts, gold, annotator, sim, queries=queries, k=args.k)
    if llm:
        est = estimate_run(texts, gold, annotator, sim, run=run)
        print(est.summary(), file=sys.stderr)
        if args.dry_run:
            out = est.as_dict()
            if check:  # the quality check runs first and costs one call per annotated task
                out["quality_check"] = estimate_run(
                    texts, gold, annotator, sim, k=args.k, queries=sorted(gold)
                ).as_dict()
            print(json.dumps(out, indent=2))
            return 0
    elif args.dry_run:
        raise ValueError(
            "--dry-run estimates LLM tokens and cost: configure an LLM (OPENAI_API_KEY) or drop --dry-run"
        )
    spent = 0.0
    if check:
        report = leave_one_out(
            texts,
            gold,
            labels,
            annotator,
            sim,
            k=args.k,
            concurrency=concurrency,
            max_cost_usd=args.max_cost,
            min_span_score=args.min_span_score,
            run_key=run_key + ":quality",
            batch_wait=args.batch_wait,
        )
        print(report.table(), file=sys.stderr)
        spent = report.cost_usd
        reason = quality_gate(report, args.min_f1)
        if reason is None and report.held:
            reason = "the cost cap was reached during the quality check"
        if reason:
            print(f"held, nothing pre-annotated: {reason}", file=sys.stderr)
            _usage(annotator)
            return EXIT_QUALITY
    elif args.min_f1 is not None:
        raise ValueError(
            "--min-f1 needs the quality check (at least 2 annotated records, no --skip-quality)"
        )
    bar = tqdm(total=len(queries), desc="pre-annotating", unit="task", disable=args.quiet)
    results = prelabel(
        texts,
        gold,
        annotator,
        sim,
        queries=queries,
        k=args.k,
        concurrency=concurrency,
        on_done=lambda r: bar.update(1),
        max_cost_usd=args.max_cost,
        spent_usd=spent,
        min_span_score=args.min_span_score,
        run_key=run_key,
        batch_wait=args.batch_wait,
        run=run,
    )
    bar.close()
    out, failed, dropped = [], 0, 0
    for r in results:
        rec = {"id": records[r.index].get("id", r.index), "text": texts[r.index]}
        if r.held:
            rec["held"] = r.held
        elif r.annotation is None:
            failed += 1
            rec["error"] = r.error
        else:
            rec["prediction"] = r.annotation.to_dict()
            dropped += r.annotation.dropped_not_found + r.annotation.dropped_bad_label
        out.append(rec)
    write_jsonl(args.output, out)
    held = len(results.held)
    print(
        f"pre-annotated {len(out) - failed - held} of {len(out)} task(s) from {len(gold)} demonstration(s) -> {args.output}; "
        f"{failed} failed, {held} held, {dropped} entity string(s) dropped (not in text or unknown label)",
        file=sys.stderr,
    )
    if held:
        print(results.held[0].held, file=sys.stderr)
    if args.max_cost is not None:
        print(
            f"counted against the cap of US${args.max_cost:.2f}: US${results.cost_usd:.4f}",
            file=sys.stderr,
        )
    _usage(annotator)
    return EXIT_FAILED if failed else EXIT_HELD if held else 0


def _prelabel_project(args) -> int:
    from alllabel.backend.orchestrator import Orchestrator
    from alllabel.backend.settings import Settings

    orch = Orchestrator(Settings.from_env())
    try:
        status = orch.prelabel_now(args.project)
    finally:
        orch.close()
    print(json.dumps(status, indent=2))
    return 1 if status["prelabels"]["failed"] else 0


def cmd_evaluate(args) -> int:
    records = read_jsonl(args.input)
    texts = texts_of(records, args.text_field)
    spans = [_spans(r, i) for i, r in enumerate(records)]
    missing = [i for i, s in enumerate(spans) if s is None]
    if missing:
        raise ValueError(
            f"evaluation needs gold entities on every record; {len(missing)} have none (first: #{missing[0]})"
        )
    labels = _labels(args, records)
    schema = LabelSchema(labels, _descriptions(args.descriptions, labels))
    annotator, concurrency = _annotator(args, schema)
    sizes = (
        [int(x) for x in args.pool_sizes.split(",")]
        if args.pool_sizes
        else list(DEFAULT_POOL_SIZES)
    )
    sim = make_similarity(texts, args.similarity, model=args.sbert_model)
    methods = [m.strip() for m in args.methods.split(",")]
    runs = len(sizes) * sum(1 if m.startswith("allabel") else args.seeds for m in methods)
    bar = tqdm(total=runs, desc="evaluating", unit="run", disable=args.quiet)

    def progress(line):
        bar.update(1)
        bar.write(line)

    screening = (
        screen(texts, threshold=args.duplicate_threshold) if "allabel-screened" in methods else None
    )
    rows = evaluate(
        texts,
        spans,
        labels,
        annotator,
        sim,
        pool_sizes=sizes,
        methods=methods,
        seeds=args.seeds,
        k=args.k,
        concurrency=concurrency,
        progress=progress,
        screening=screening,
    )
    bar.close()
    paths = write_reports(
        rows,
        args.out_dir,
        title=f"{Path(args.input).name}: {annotator.name}, k={args.k}, {args.similarity}",
    )
    print(paths["table"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    _usage(annotator)
    return 0


def cmd_demo(args) -> int:
    """The whole loop offline: select, 'annotate' with the gold labels, pre-annotate the rest, score."""
    records = read_jsonl(args.input)
    texts = texts_of(records)
    spans = [_spans(r, i) for i, r in enumerate(records)]
    labels = _labels(args, records)
    schema = LabelSchema(labels)
    annotator, concurrency = _annotator(args, schema)
    m = resolve_budget(parse_budget(args.budget), len(texts))
    sim = make_similarity(texts, args.similarity, model=args.sbert_model)
    print(f"{len(texts)} tasks, budget {m} human annotations, k={args.k}", file=sys.stderr)
    sel = select(sim, m, k=args.k)
    print(
        "ALLabel queue: " + ", ".join(f"#{i} ({s})" for i, s in zip(sel.indices, sel.stages)),
        file=sys.stderr,
    )
    gold = {i: spans[i] for i in sel.indices}
    queries = [i for i in range(len(texts)) if i not in gold]
    results = prelabel(
        texts, gold, annotator, sim, queries=queries, k=args.k, concurrency=concurrency
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out_dir / "prelabels.jsonl",
        [
            {
                "id": records[r.index].get("id", r.index),
                **(r.annotation.to_dict() if r.annotation else {"error": r.error}),
            }
            for r in results
        ],
    )
    # The paper's in-domain score of this pool, next to a random pool of the same size.
    for name, pool in (
        ("ALLabel", sel.indices),
        ("random", select(sim, m, method="random").indices),
    ):
        f1, sf1, *_ = score_pool(texts, spans, labels, pool, annotator, sim, args.k, concurrency)
        print(
            f"{name:8s} pool of {m}: F1 {100 * f1:.1f} (paper metric), span micro F1 {100 * sf1:.1f}"
        )
    print(f"pre-annotations written to {out_dir / 'prelabels.jsonl'}", file=sys.stderr)
    _usage(annotator)
    return 0


def cmd_status(args) -> int:
    """Ask the running backend (GET /status) rather than reading its state folder."""
    import httpx

    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    url = args.url.rstrip("/") + "/status"
    try:
        r = httpx.get(
            url,
            params={"project": args.project} if args.project is not None else None,
            auth=(user, password or "") if user else None,
            timeout=args.timeout,
        )
    except httpx.HTTPError as e:
        raise RuntimeError(
            f"no alllabel backend answers at {args.url} ({type(e).__name__}: {e}); start it (bash scripts/start.sh) or pass --url"
        ) from None
    if r.status_code == 401:
        raise RuntimeError(
            f"the backend at {args.url} wants HTTP basic auth: set BASIC_AUTH_USER and BASIC_AUTH_PASS to its credentials"
        )
    try:
        data = r.json()
    except ValueError:
        data = None
    if r.status_code != 200 or not isinstance(data, dict) or "projects" not in data:
        raise RuntimeError(
            f"{url} answered HTTP {r.status_code} with {r.text[:200]!r}: is that an alllabel backend?"
        )
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


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
        default=_env_number("ALLABEL_MAX_COST_USD"),
        help="stop before spending more than this many US$ (default ALLABEL_MAX_COST_USD); the quality check counts too; "
        "cached answers count at their price, so a higher cap resumes",
    )
    p.add_argument(
        "--min-f1",
        type=float,
        default=_env_number("ALLABEL_MIN_F1"),
        help="hold the run when the leave-one-out F1 (paper metric, 0..1) is below this (default ALLABEL_MIN_F1)",
    )
    p.add_argument(
        "--min-span-score",
        type=float,
        default=_env_number("ALLABEL_MIN_SPAN_SCORE"),
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
    common(p)
    p.set_defaults(func=cmd_evaluate)

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
    args = build_parser().parse_args(argv)
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
