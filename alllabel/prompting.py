"""The ICL prompt (paper Appendix A): role, task, entity definitions, format, k examples, input.

The model answers with a JSON object ``{"entities": [{"label", "text", "occurrence"?}, ...]}``:
JSON mode needs an object at the top level. ``parse_entities`` also accepts a bare list.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

DEFAULT_ROLE = (
    "You are a domain expert with many years of experience in reading scientific and technical "
    "literature and extracting key information from it accurately and systematically."
)


@dataclass
class LabelSchema:
    """The project's entity types, with optional definitions (shown to the LLM)."""

    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.labels:
            raise ValueError("the label set is empty: define at least one entity label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in {self.labels}")
        unknown = set(self.descriptions) - set(self.labels)
        if unknown:
            raise ValueError(f"descriptions given for labels that are not in the label set: {sorted(unknown)}")


@dataclass
class Example:
    text: str
    entities: list[dict]  # {"label", "text", "occurrence"?} in text order


class PromptBuilder:
    def __init__(self, schema: LabelSchema, *, role: str = DEFAULT_ROLE, task: str | None = None):
        self.schema = schema
        self.role = role
        self.task = task or "Your task is to find every mention of the entity types defined below in the input text."

    def system(self) -> str:
        defs = "\n".join(
            f'- "{lab}"' + (f": {self.schema.descriptions[lab]}" if self.schema.descriptions.get(lab) else "")
            for lab in self.schema.labels
        )
        return (
            f"{self.role}\n\n"
            f"Task description:\n{self.task}\n\n"
            f"Entity types (use exactly these labels, nothing else):\n{defs}\n\n"
            "Output format:\n"
            'Answer with one JSON object {"entities": [...]}. Each item is {"label": <one of the labels above>, '
            '"text": <the exact words copied from the input>}; add "occurrence": n (1 = first) when the same '
            "words occur more than once in the input and you mean a later mention. List entities in the order "
            'they appear, list a repeated mention once per mention, and answer {"entities": []} if there are none. '
            "Do not explain."
        )

    def messages(self, examples: list[Example], text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system()}]
        for i, ex in enumerate(examples, start=1):
            msgs.append({"role": "user", "content": f"Example input {i}:\n{ex.text}"})
            msgs.append({"role": "assistant", "content": json.dumps({"entities": ex.entities}, ensure_ascii=False)})
        msgs.append({"role": "user", "content": f"Input:\n{text}"})
        return msgs


class ReplyError(ValueError):
    """The LLM's reply is not the JSON we asked for."""


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_entities(reply: str) -> list[dict]:
    """Entities from a reply: ``{"entities": [...]}`` or a bare list; code fences tolerated."""
    body = reply.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise ReplyError(f"reply is not JSON ({e.msg} at char {e.pos}): {reply[:120]!r}") from None
    if isinstance(data, dict):
        if "entities" not in data:
            raise ReplyError(f'reply JSON has no "entities" key (keys: {sorted(data)[:8]})')
        data = data["entities"]
    if not isinstance(data, list):
        raise ReplyError(f"entities must be a list, got {type(data).__name__}")
    out = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("label"), str) and isinstance(item.get("text"), str):
            ent = {"label": item["label"], "text": item["text"]}
            if isinstance(item.get("occurrence"), int) and not isinstance(item.get("occurrence"), bool):
                ent["occurrence"] = item["occurrence"]
            out.append(ent)
        else:
            out.append({"label": None, "text": None, "malformed": item})
    return out
