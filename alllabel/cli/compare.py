"""``alllabel compare``: the leave-one-out quality check for two or more models or prompt settings,
side by side, before a run is paid for.

Each ``--variant "key=value,key=value"`` is one LLM set-up (keys in ``VARIANT_KEYS``; the rest
comes from the command line and the environment, as for ``prelabel``). Every variant is scored on
the same human-annotated records (each a query, its k demonstrations from the others); the table
shows per label F1, then US$ per task and latency. ``--max-cost`` caps the whole comparison: every
billed call counts, failed ones too; the variants left when it is reached are held, not run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from alllabel.cli.common import _descriptions, _labels, _spans
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.prelabel.annotators import LLMAnnotator
from alllabel.prelabel.prompt import LabelSchema
from alllabel.prelabel.quality import QualityReport, leave_one_out
from alllabel.selection.similarity import make_similarity
from alllabel.text.jsonl import read_jsonl, texts_of

EXIT_HELD = 3  # as prelabel: some variant was held by the cost cap

# What a variant may set: name (its column), the endpoint and model, sampling, k, prices, and the
# environment variable that holds its API key (a key itself never goes on a command line).
VARIANT_KEYS = {
    "name": str,
    "model": str,
    "base_url": str,
    "api_key_env": str,
    "k": int,
    "temperature": float,
    "max_tokens": int,
    "price_input": float,
    "price_output": float,
}


@dataclass
class Outcome:
    name: str
    k: int
    report: QualityReport | None  # None: not run (the cap was reached before it)
    calls: int = 0
    seconds: float = 0.0


def parse_variant(text: str) -> dict:
    """``"model=gpt-4o-mini,k=5"`` as a dict of typed values (ValueError saying what is wrong)."""
    out: dict = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in VARIANT_KEYS:
            raise ValueError(
                f"--variant {text!r}: {part!r} is not key=value with a key among "
                + ", ".join(VARIANT_KEYS)
            )
        try:
            out[key] = VARIANT_KEYS[key](value)
        except ValueError:
            kind = VARIANT_KEYS[key].__name__
            raise ValueError(f"--variant {text!r}: {key}={value!r} is not {kind}") from None
    if not out:
        raise ValueError("--variant needs key=value pairs, e.g. model=gpt-4o-mini,k=5")
    out.setdefault("name", text)
    return out


def variant_annotator(v: dict, args, schema: LabelSchema, cache: LLMCache | None):
    overrides = {k: v[k] for k in ("model", "temperature", "max_tokens") if k in v}
    overrides.update({k: v[k] for k in ("price_input", "price_output") if k in v})
    base_url = v.get("base_url", args.base_url)
    key_env = v.get("api_key_env", "OPENAI_API_KEY")
    if key_env not in os.environ:
        raise ValueError(f"variant {v['name']!r}: {key_env} (its api_key_env) is not set")
    config = LLMConfig.from_env(
        base_url=base_url,
        api_key=os.environ[key_env],
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_prompt_tokens=args.max_prompt_tokens,
        **overrides,
    )
    # The cache is keyed on model and prompt, not endpoint: another endpoint is never cached.
    shared = cache if "base_url" not in v or v["base_url"] == args.base_url else None
    return LLMAnnotator(LLMClient(config, shared), schema)


def compare(args, variants: list[dict]) -> list[Outcome]:
    records = read_jsonl(args.input)
    texts = texts_of(records, args.text_field)
    spans = [_spans(r, i) for i, r in enumerate(records)]
    gold = {i: s for i, s in enumerate(spans) if s is not None}
    if len(gold) < 2:
        raise ValueError("compare needs at least 2 human-annotated records (with 'entities')")
    labels = _labels(args, records)
    schema = LabelSchema(labels, _descriptions(args.descriptions, labels))
    sim = make_similarity(texts, args.similarity, model=args.sbert_model)
    cache = LLMCache(args.cache) if args.cache else None
    spent, out = 0.0, []
    for v in variants:
        k = v.get("k", args.k)
        if args.max_cost is not None and spent >= args.max_cost:
            out.append(Outcome(v["name"], k, None))
            continue
        annotator = variant_annotator(v, args, schema, cache)
        report = leave_one_out(
            texts, gold, labels, annotator, sim, k=k,
            concurrency=annotator.client.config.concurrency,
            max_cost_usd=args.max_cost, spent_usd=spent,
        )  # fmt: skip
        # What the cap counts: every billed attempt, or cached answers at their price.
        spent += max(report.billed_usd, report.cost_usd)
        u = annotator.client.usage
        out.append(Outcome(v["name"], k, report, u.calls, u.call_seconds))
    return out


def table(outcomes: list[Outcome], labels: list[str]) -> str:
    """Labels down, variants across: F1 per label, then the totals, cost and latency."""
    width = max(12, *(len(o.name) for o in outcomes))
    first = max(len("US$ per task"), *(len(f"F1 {lab}") for lab in labels))

    def row(name: str, cells: list[str]) -> str:
        return f"{name:<{first}}  " + "  ".join(f"{c:>{width}}" for c in cells)

    def each(fn) -> list[str]:
        return [fn(o.report, o) if o.report is not None else "held" for o in outcomes]

    def pct(x) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [row("", [o.name for o in outcomes]), row("k", [str(o.k) for o in outcomes])]
    lines += [
        row(f"F1 {lab}", each(lambda r, o, lab=lab: pct(r.per_label[lab]["f1"]))) for lab in labels
    ]
    lines += [
        row("span F1", each(lambda r, o: pct(r.span_f1))),
        row("paper F1", each(lambda r, o: pct(r.f1))),
        row("scored", each(lambda r, o: f"{r.scored}/{r.tasks}")),
        row("US$ per task", each(lambda r, o: f"{max(r.billed_usd, r.cost_usd) / r.tasks:.5f}")),
        row("latency s", each(lambda r, o: f"{o.seconds / o.calls:.2f}" if o.calls else "-")),
    ]
    return "\n".join(lines)


def cmd_compare(args) -> int:
    if len(args.variant or []) < 2:
        raise ValueError('compare needs two or more --variant "key=value,..." (see --help)')
    variants = [parse_variant(v) for v in args.variant]
    outcomes = compare(args, variants)
    labels = _labels(args, read_jsonl(args.input))
    print(table(outcomes, labels))
    held = [o for o in outcomes if o.report is None or o.report.held]
    if args.json:
        data = [
            {"name": o.name, "k": o.k, "calls": o.calls, "call_seconds": o.seconds}
            | ({} if o.report is None else o.report.as_dict())
            for o in outcomes
        ]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    if held:
        cap = args.max_cost
        print(f"held by the cost cap of US${cap:.2f}: {', '.join(o.name for o in held)}; raise "
              "--max-cost (ALLABEL_MAX_COST_USD) and run again (cached answers are reused)",
              file=sys.stderr)  # fmt: skip
        return EXIT_HELD
    return 0
