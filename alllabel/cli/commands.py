"""The commands other than prelabel: select, evaluate, demo, status."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from alllabel.backend.settings import parse_budget, parse_ratios, resolve_budget
from alllabel.cli.common import (
    Bar,
    _annotator,
    _descriptions,
    _labels,
    _spans,
    _usage,
)
from alllabel.evaluation.classification import evaluate_choices, write_choice_reports
from alllabel.evaluation.protocol import (
    DEFAULT_POOL_SIZES,
    evaluate,
    score_pool,
    write_reports,
)
from alllabel.prelabel.prompt import ChoiceGroup, LabelSchema
from alllabel.prelabel.run import prelabel
from alllabel.selection.blocks import make_runner
from alllabel.selection.screening import screen
from alllabel.selection.similarity import Similarity, make_similarity
from alllabel.selection.stages import select
from alllabel.text.jsonl import read_jsonl, texts_of, write_jsonl


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


def cmd_evaluate(args) -> int:
    if args.choices_field:
        return _evaluate_choices(args)
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
    annotator, sim, common = _evaluation_setup(args, texts, schema)
    sizes, methods = common["pool_sizes"], common["methods"]
    runs = len(sizes) * sum(1 if m.startswith("allabel") else args.seeds for m in methods)
    runs *= len(args.demos.split(","))
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
        **common,
        progress=progress,
        screening=screening,
        demos=[d.strip() for d in args.demos.split(",")],
    )
    bar.close()
    paths = write_reports(
        rows,
        args.out_dir,
        title=f"{Path(args.input).name}: {annotator.name}, k={args.k}, {args.similarity}, "
        f"{args.demos} demonstrations",
    )
    _show_reports(paths)
    _usage(annotator)
    return 0


def _evaluate_choices(args) -> int:
    """``evaluate --choices-field F``: a classification set, each record's answer in ``F`` (a list)."""
    records = read_jsonl(args.input)
    texts = texts_of(records, args.text_field)
    gold = [r.get(args.choices_field) for r in records]
    bad = [i for i, g in enumerate(gold) if not isinstance(g, list)]
    if bad:
        raise ValueError(f"every record needs a list in {args.choices_field!r}; #{bad[0]} has none")
    values = tuple(sorted({c for g in gold for c in g}))
    multiple = args.multiple or any(len(g) != 1 for g in gold)
    group = ChoiceGroup(args.choices_field, values, multiple=multiple)
    annotator, sim, common = _evaluation_setup(args, texts, LabelSchema([], choices=(group,)))
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    rows = evaluate_choices(texts, gold, annotator, sim, **common, progress=say)
    title = f"{Path(args.input).name} ({args.choices_field}): {annotator.name}, k={args.k}, {args.similarity}"
    paths = write_choice_reports(rows, args.out_dir, title=title)
    _show_reports(paths)
    _usage(annotator)
    return 0


def _evaluation_setup(
    args, texts: list[str], schema: LabelSchema
) -> tuple[object, Similarity, dict]:
    """What both evaluations (spans, choices) are given: the annotator, the similarity, and the
    keyword arguments from the shared options (pool sizes, methods, seeds, k, concurrency)."""
    annotator, concurrency = _annotator(args, schema)
    sim = make_similarity(texts, args.similarity, model=args.sbert_model)
    common = {
        "pool_sizes": _pool_sizes(args),
        "methods": [m.strip() for m in args.methods.split(",")],
        "seeds": args.seeds,
        "k": args.k,
        "concurrency": concurrency,
    }
    return annotator, sim, common


def _pool_sizes(args) -> list[int]:
    """--pool-sizes (comma-separated), else the paper's 10..60 step 5."""
    if not args.pool_sizes:
        return list(DEFAULT_POOL_SIZES)
    return [int(x) for x in args.pool_sizes.split(",")]


def _show_reports(paths: dict) -> None:
    """The table on stdout, where the reports went on stderr."""
    print(paths["table"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)


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
