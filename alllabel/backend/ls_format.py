"""Label Studio's formats, read and written in one place.

Tasks carry their text in ``data[<value key>]``; annotations and predictions carry a ``result``
list of regions ``{from_name, to_name, type: "labels", value: {start, end, text, labels}}`` with
Python ``str`` offsets (Label Studio's text UI counts code points too, measured on 1.23.2).
"""

from __future__ import annotations

import hashlib
import json

from alllabel.backend.label_config import TEXT_JOIN, ChoicesConfig, NERConfig, TextConfig
from alllabel.text.spans import Span

# The queue position p is pushed as score p * QUEUE_SCORE_STEP: Label Studio keeps only scores in
# [0, 1] (negative ones are silently dropped) and Uncertainty sampling serves the lowest first.
QUEUE_SCORE_STEP = 1e-6


def task_text(task: dict, cfg: TextConfig) -> tuple[str | None, str | None]:
    """(text, None) for a usable task, or (None, why it cannot be used). Several <Text> objects:
    their values joined in config order (``TEXT_JOIN``), the text the selection reads."""
    data = task.get("data") or {}
    values = [data.get(key) for key in cfg.value_keys]
    missing = [key for key, v in zip(cfg.value_keys, values) if not isinstance(v, str)]
    if missing:
        return None, f"task data field {missing[0]!r} is missing or not text"
    text = TEXT_JOIN.join(values)
    if not text.strip():
        return None, "empty text"
    return text, None


def result_spans(result: list, cfg: NERConfig) -> list[dict]:
    """The labeled spans of an annotation's result, as {start, end, label} (other controls ignored)."""
    spans = []
    for r in result or []:
        v = r.get("value") or {}
        if isinstance(v.get("start"), int) and isinstance(v.get("end"), int) and v.get("labels"):
            label = cfg.label_of(r.get("from_name"), v["labels"][0])
            if label is not None:
                spans.append({"start": v["start"], "end": v["end"], "label": label})
    return spans


def span_result(cfg: NERConfig, span: Span) -> dict:
    """One region of a prediction's result."""
    from_name, value = cfg.source(span.label)  # several groups: the region goes to its own
    r = {
        "from_name": from_name,
        "to_name": cfg.to_name,
        "type": "labels",
        "value": {"start": span.start, "end": span.end, "text": span.text, "labels": [value]},
    }
    if span.score is not None:
        r["score"] = span.score
    return r


def result_choices(result: list, cfg: ChoicesConfig) -> list[str] | None:
    """The values an annotation chose in the <Choices> group (None: it did not answer it)."""
    for r in result or []:
        v = r.get("value") or {}
        if r.get("from_name") == cfg.from_name and isinstance(v.get("choices"), list):
            return [c for c in v["choices"] if c in cfg.choices]
    return None


def choices_result(cfg: ChoicesConfig, choices: list[str], score: float | None) -> dict:
    """A prediction's <Choices> region, in Label Studio's ``choices`` format."""
    r = {
        "from_name": cfg.from_name,
        "to_name": cfg.to_name,
        "type": "choices",
        "value": {"choices": list(choices)},
    }
    if score is not None:
        r["score"] = score
    return r


def queue_score(position: int) -> float:
    return position * QUEUE_SCORE_STEP


def digest(result: list, score: float | None) -> str:
    """What a prediction says, to compare what Label Studio holds with what it should hold."""
    body = json.dumps(
        [result, None if score is None else round(float(score), 9)],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha1(body.encode()).hexdigest()[:16]


def desired(
    result: list | None, score: float | None, position: int | None
) -> tuple[list, float] | None:
    """What Label Studio should hold for a task: its pre-annotation, else its empty queue entry, else nothing."""
    if result is not None:
        return result, score
    if position is not None:
        return [], queue_score(position)
    return None


def desired_digest(result: list | None, score: float | None, position: int | None) -> str | None:
    want = desired(result, score, position)
    return None if want is None else digest(*want)


def import_item(task_id: int, result: list, score: float, model_version: str) -> dict:
    """One entry of Label Studio's bulk prediction import."""
    return {"task": task_id, "result": result, "score": score, "model_version": model_version}


def annotation_ids(value) -> list[int]:
    """A task listing's ``annotations_ids``: "1,2" on SQLite, [1, 2] on PostgreSQL."""
    if isinstance(value, list):
        return [int(v) for v in value if v is not None]
    return [int(v) for v in str(value or "").replace(" ", "").split(",") if v.isdigit()]
