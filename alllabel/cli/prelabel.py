"""``alllabel prelabel``: a JSONL file through the pre-annotation pipeline, or a Label Studio
project through the backend's (``--project``). Both run ``alllabel.prelabel.pipeline``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from alllabel.cli.common import _annotator, _descriptions, _labels, _spans, _usage
from alllabel.prelabel.annotators import Priced
from alllabel.prelabel.estimate import estimate_run
from alllabel.prelabel.holds import Hold, with_cause
from alllabel.prelabel.pipeline import PipelineOutcome, PipelineSettings, run_pipeline
from alllabel.prelabel.prompt import LabelSchema
from alllabel.prelabel.run import PrelabelResults, prepare_run
from alllabel.selection.retrieval import demonstrations
from alllabel.selection.similarity import make_similarity
from alllabel.text.jsonl import jsonl_line, read_jsonl, texts_of, write_lines

# Exit codes of prelabel: 0 all done, 1 some failed, 3 some held (cost cap or a batch still
# running: run again), 4 held by the quality check (--min-f1), 2 usage or setup errors.
EXIT_FAILED, EXIT_HELD, EXIT_QUALITY = 1, 3, 4


def _gold(args, records: list[dict]) -> dict[int, list[dict]]:
    """The human-annotated records: those in --pool, else those with an 'entities' list."""
    spans = [_spans(r, i) for i, r in enumerate(records)]
    if not args.pool:
        return {i: s for i, s in enumerate(spans) if s is not None}
    pool_ids = {r["id"] for r in read_jsonl(args.pool)}
    gold = {i: spans[i] or [] for i, r in enumerate(records) if r.get("id", i) in pool_ids}
    if len(gold) != len(pool_ids):
        raise ValueError(
            f"{len(pool_ids) - len(gold)} id(s) in {args.pool} are not in {args.input}"
        )
    return gold


def _chosen(args, records: list[dict], queries: list[int]) -> list[int]:
    """The records to pre-annotate: --ids (in file order), then the first --limit of them."""
    if args.ids:
        wanted = {x.strip() for x in args.ids.split(",") if x.strip()}
        queries = [i for i in queries if str(records[i].get("id", i)) in wanted]
        found = {str(records[i].get("id", i)) for i in queries}
        if wanted - found:
            raise ValueError(
                f"--ids: no record to pre-annotate with id {', '.join(sorted(wanted - found))} "
                f"in {args.input} (unknown, or annotated already)"
            )
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}")
        queries = queries[: args.limit]
    return queries


def _dry_run(args, texts, gold, queries, annotator, sim) -> int:
    """The estimate alone (no call), with the quality check's when it would run."""
    if not isinstance(annotator, Priced):
        raise ValueError(
            "--dry-run estimates LLM tokens and cost: configure an LLM (OPENAI_API_KEY) or drop "
            "--dry-run"
        )
    work = prepare_run(texts, gold, annotator, sim, queries=queries, k=args.k)
    est = estimate_run(texts, gold, annotator, sim, run=work)
    print(est.summary(), file=sys.stderr)
    out = est.as_dict()
    if not args.skip_quality and len(gold) >= 2:  # one call per annotated task, before the run
        out["quality_check"] = estimate_run(
            texts, gold, annotator, sim, k=args.k, queries=sorted(gold)
        ).as_dict()
    print(json.dumps(out, indent=2))
    return 0


def _line(records, texts, r) -> str:
    """Task ``r``'s line of the JSONL output."""
    rec = {"id": records[r.index].get("id", r.index), "text": texts[r.index]}
    if r.held:
        rec["held"] = r.held.message
    elif r.annotation is None:
        rec["error"] = r.error
    else:
        rec["prediction"] = r.annotation.to_dict()
    return jsonl_line(rec)


def _report(args, records, texts, gold, outcome: PipelineOutcome, lines: dict) -> int:
    """Write the JSONL output and the summary; the exit code. ``lines``: task index -> (result,
    its line) made as each task finished, so the output is written at once after the last reply
    (encoding it all then took ~20 ms CPU at 600 tasks, after the run's last call)."""
    results = outcome.results
    carried = [r for r, _ in outcome.carried.values()]
    out, failed, dropped = [], 0, 0
    for r in sorted([*carried, *results], key=lambda r: r.index):
        made = lines.get(r.index)
        out.append(made[1] if made is not None and made[0] is r else _line(records, texts, r))
        if r.held:
            continue
        if r.annotation is None:
            failed += 1
        else:
            dropped += r.annotation.dropped_not_found + r.annotation.dropped_bad_label
    write_lines(args.output, out)
    held = len(results.held)
    print(
        f"pre-annotated {len(out) - failed - held} of {len(out)} task(s) from {len(gold)} "
        f"demonstration(s) -> {args.output}; {failed} failed, {held} held, {dropped} entity "
        "string(s) dropped (not in text or unknown label)",
        file=sys.stderr,
    )
    if outcome.hold is not None:
        print(outcome.hold.message, file=sys.stderr)
    if args.max_cost is not None:
        print(
            f"counted against the cap of US${args.max_cost:.2f}: US${results.cost_usd:.4f} "
            f"(billed in this run: US${results.billed_usd:.4f})",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed else EXIT_HELD if held else 0


class CacheLedger:
    """The command line's spend across runs: per run key, in the LLM cache's SQLite file."""

    def __init__(self, cache, run_key: str):
        self.cache, self.run_key = cache, run_key

    def spent(self) -> float:
        return self.cache.spent(self.run_key)

    def charge(self, usd: float) -> None:
        self.cache.add_spent(self.run_key, usd)

    def explain(self, hold: Hold | None) -> Hold | None:
        """A cap hold names the failure that spent the cap, in this run or an earlier one."""
        if hold is None or hold.kind != "cost_cap":
            return hold
        if hold.cause:
            self.cache.note_spend_cause(self.run_key, hold.cause)
            return hold
        cause = self.cache.spend_cause(self.run_key)
        return with_cause(hold, cause) if cause else hold


def _ledger(annotator, settings: PipelineSettings) -> CacheLedger | None:
    """A ledger where there is a cache to keep it in (without one, nothing is kept: the run
    counts the answers it uses, as the library does)."""
    cache = getattr(getattr(annotator, "client", None), "cache", None)
    return CacheLedger(cache, settings.run_key) if cache is not None else None


def _settings(args, concurrency: int, check: bool) -> PipelineSettings:
    return PipelineSettings(
        k=args.k,
        concurrency=concurrency,
        max_cost_usd=args.max_cost,
        min_span_score=args.min_span_score,
        quality_check=check,
        min_f1=args.min_f1,
        run_key=args.run_key or f"cli:{Path(args.input).resolve()}",
        batch_wait=args.batch_wait,
        duplicate_threshold=args.duplicate_threshold if args.carry_duplicates else None,
    )


def cmd_prelabel(args) -> int:
    if args.project is not None:
        return _prelabel_project(args)
    if not args.input:
        raise ValueError("give a JSONL file, or --project ID for a Label Studio project")
    records = read_jsonl(args.input)
    texts = texts_of(records, args.text_field)
    gold = _gold(args, records)
    queries = _chosen(args, records, [i for i in range(len(texts)) if i not in gold])
    labels = _labels(args, records)
    annotator, concurrency = _annotator(
        args, LabelSchema(labels, _descriptions(args.descriptions, labels))
    )
    sim = demonstrations(
        make_similarity(texts, args.similarity, model=args.sbert_model), args.demos
    )
    if args.dry_run:
        return _dry_run(args, texts, gold, queries, annotator, sim)
    check = not args.skip_quality and len(gold) >= 2
    if args.min_f1 is not None and not check:
        raise ValueError(
            "--min-f1 needs the quality check (at least 2 annotated records, no --skip-quality)"
        )
    settings = _settings(args, concurrency, check)
    bar = tqdm(total=len(queries), desc="pre-annotating", unit="task", disable=args.quiet)

    def step(name: str, value) -> None:
        if name == "estimate":
            print(value.summary(), file=sys.stderr)
        elif name == "quality":
            print(value.table(), file=sys.stderr)

    ledger = _ledger(annotator, settings)
    lines: dict = {}

    def done(r) -> None:
        bar.update(1)
        lines[r.index] = (r, _line(records, texts, r))  # during the run, not after its last call

    outcome = run_pipeline(
        texts,
        gold,
        annotator,
        sim,
        queries,
        settings,
        labels=labels,
        ledger=ledger,
        on_step=step,
        on_done=done,
    )
    bar.close()
    if ledger is not None:
        outcome.hold = ledger.explain(outcome.hold)
    if outcome.results is None and outcome.hold is None:  # nothing left to pre-annotate
        outcome.results = PrelabelResults()
    if outcome.results is None:  # held before the run: nothing pre-annotated
        print(f"held, nothing pre-annotated: {outcome.hold.message}", file=sys.stderr)
        _usage(annotator)
        return EXIT_QUALITY
    code = _report(args, records, texts, gold, outcome, lines)
    _usage(annotator)
    return code


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
