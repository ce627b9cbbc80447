"""What the commands share: reading records, the annotator, progress bars."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.prelabel.annotators import LLMAnnotator, ProjectionAnnotator
from alllabel.prelabel.prompt import LabelSchema


def _example_data() -> Path:
    """The bundled MOF sample: alllabel/examples/ when installed from a wheel, examples/ in a checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "examples" / "mof_sample.jsonl"
    return installed if installed.exists() else package.parent / "examples" / "mof_sample.jsonl"


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
    c = getattr(annotator, "client", None)
    if c is not None:
        print("LLM usage: " + json.dumps(c.report()), file=sys.stderr)
