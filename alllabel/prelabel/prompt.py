"""The ICL prompt (paper Appendix A): role, task, entity definitions, format, k examples, input.

The model answers with a JSON object ``{"entities": [{"label", "text", "occurrence"?}, ...]}``:
JSON mode needs an object at the top level. ``parse_entities`` also accepts a bare list.
``response_schema`` is the same shape as a JSON schema with the project's labels as an enum, for
endpoints that support structured outputs. ``PromptBuilder.fingerprint`` hashes everything that
makes up the prompt's wording, so stored pre-annotations can tell when the prompt changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from alllabel.text.spans import is_whole_word, occurrence_of

# Bump when the prompt's wording or layout changes in code (it changes every fingerprint).
PROMPT_FORMAT = 2
EXAMPLE_PREFIX = "Example input {n}:\n"
INPUT_PREFIX = "Input:\n"

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
            raise ValueError(
                f"descriptions given for labels that are not in the label set: {sorted(unknown)}"
            )


@dataclass
class Example:
    text: str
    entities: list[dict]  # {"label", "text", "occurrence"?} in text order
    spans: list[dict] | None = None  # the same entities as {"start", "end", "label"}, when known
    answer_text: str | None = field(
        default=None, repr=False, compare=False
    )  # answer(self), kept once made


def example_from_spans(text: str, spans: Sequence[dict]) -> Example:
    """A demonstration's expected output: its entities in text order, with occurrence hints where
    alignment needs them: a later mention, or a first one inside a longer word ("Ga-CAU-11A")
    when a whole-word mention comes later (alignment would prefer that one)."""
    ents, ordered = [], sorted(spans, key=lambda s: (s["start"], s["end"]))
    for s in ordered:
        e = {"label": s["label"], "text": text[s["start"] : s["end"]]}
        occ = occurrence_of(text, s["start"], s["end"])
        if occ and (occ > 1 or not is_whole_word(text, s["start"], s["end"])):
            e["occurrence"] = occ
        ents.append(e)
    return Example(
        text, ents, [{"start": s["start"], "end": s["end"], "label": s["label"]} for s in ordered]
    )


def answer(example: Example) -> str:
    """The assistant message that demonstrates ``example`` (made once: demonstrations recur)."""
    if example.answer_text is None:
        example.answer_text = json.dumps({"entities": example.entities}, ensure_ascii=False)
    return example.answer_text


def response_schema(labels: Sequence[str]) -> dict:
    """``response_format`` for structured outputs: the reply shape, labels restricted to the set.

    Strict mode needs every property required, so ``occurrence`` is an integer or null."""
    item = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(labels)},
            "text": {"type": "string"},
            "occurrence": {"type": ["integer", "null"]},
        },
        "required": ["label", "text", "occurrence"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"entities": {"type": "array", "items": item}},
        "required": ["entities"],
        "additionalProperties": False,
    }
    return {
        "type": "json_schema",
        "json_schema": {"name": "entities", "strict": True, "schema": schema},
    }


class PromptBuilder:
    def __init__(self, schema: LabelSchema, *, role: str = DEFAULT_ROLE, task: str | None = None):
        self.schema = schema
        self.role = role
        self.task = (
            task
            or "Your task is to find every mention of the entity types defined below in the input text."
        )

    def system(self) -> str:
        if getattr(self, "_system", None) is None:
            self._system = self._make_system()
        return self._system

    def _make_system(self) -> str:
        defs = "\n".join(
            f'- "{lab}"'
            + (f": {self.schema.descriptions[lab]}" if self.schema.descriptions.get(lab) else "")
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
            msgs.append({"role": "user", "content": EXAMPLE_PREFIX.format(n=i) + ex.text})
            msgs.append({"role": "assistant", "content": answer(ex)})
        msgs.append({"role": "user", "content": INPUT_PREFIX + text})
        return msgs

    def fingerprint(self, *settings: object) -> str:
        """A short hash of the prompt's wording (instructions, labels, definitions, layout) and of
        ``settings`` that change prompts (model, prompt limit, ...): equal fingerprints, equal prompts
        for equal inputs and demonstrations."""
        material = json.dumps(
            [PROMPT_FORMAT, self.system(), EXAMPLE_PREFIX, INPUT_PREFIX, *map(str, settings)],
            ensure_ascii=False,
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]


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
        if (
            isinstance(item, dict)
            and isinstance(item.get("label"), str)
            and isinstance(item.get("text"), str)
        ):
            ent = {"label": item["label"], "text": item["text"]}
            if isinstance(item.get("occurrence"), int) and not isinstance(
                item.get("occurrence"), bool
            ):
                ent["occurrence"] = item["occurrence"]
            out.append(ent)
        else:
            out.append({"label": None, "text": None, "malformed": item})
    return out
