"""The ICL prompt (paper Appendix A): role, task, entity definitions, format, k examples, input.

The model answers with a JSON object ``{"entities": [{"label", "text", "occurrence"?}, ...]}``:
JSON mode needs an object at the top level. ``parse_entities`` also accepts a bare list. A config
with ``<Choices>`` groups (``LabelSchema.choices``) asks for them in the same reply:
``{"entities": [...], "choices": {<group name>: <value> | [<values>]}}`` (no ``entities`` when the
config has no ``<Labels>``); ``parse_answer`` reads both. ``response_schema`` is the same shape as
a JSON schema with the labels and each group's values as enums, for endpoints that support
structured outputs. ``PromptBuilder.fingerprint`` hashes everything that
makes up the prompt's wording, so stored pre-annotations can tell when the prompt changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

from alllabel.text.spans import is_whole_word, occurrence_of

# Bump when the prompt's wording or layout changes in code (it changes every fingerprint).
PROMPT_FORMAT = 2
EXAMPLE_PREFIX = "Example input {n}:\n"
INPUT_PREFIX = "Input:\n"

DEFAULT_ROLE = (
    "You are a domain expert with many years of experience in reading scientific and technical "
    "literature and extracting key information from it accurately and systematically."
)


@dataclass(frozen=True)
class ChoiceGroup:
    """A ``<Choices>`` group answered in the same reply as the spans: its name (the reply's key
    and the results' from_name), its values and their definitions, one value or several."""

    name: str
    values: tuple[str, ...]
    _: KW_ONLY  # a positional True would be read as descriptions
    descriptions: tuple[tuple[str, str], ...] = ()
    multiple: bool = False

    def shape(self, chosen: Sequence[str]) -> str | list[str] | None:
        """The reply's value for ``chosen``: a list (multiple), else one value or null."""
        return list(chosen) if self.multiple else (chosen[0] if chosen else None)


@dataclass
class LabelSchema:
    """The project's entity types, with optional definitions (shown to the LLM), and the
    ``<Choices>`` groups answered in the same call (a config may have only those)."""

    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    choices: tuple[ChoiceGroup, ...] = ()

    def __post_init__(self):
        if not self.labels and not self.choices:
            raise ValueError("the label set is empty: define at least one entity label")
        names = [g.name for g in self.choices]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate <Choices> names in {names}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in {self.labels}")
        unknown = set(self.descriptions) - set(self.labels)
        if unknown:
            raise ValueError(
                f"descriptions given for labels that are not in the label set: {sorted(unknown)}"
            )


class Annotated(list):
    """A human annotation as the pipeline carries it: its spans ({start, end, label}: the list
    itself) and its ``<Choices>`` answers in the reply's shape (``ChoiceGroup.shape``);
    ``entities`` False when the config has no ``<Labels>`` (the reply has no entities then)."""

    def __init__(self, spans=(), choices: dict | None = None, entities: bool = True):
        super().__init__(spans)
        self.choices = dict(choices or {})
        self.entities = entities

    def chosen(self, group: str) -> list[str]:
        """The values chosen in ``group`` (empty when none)."""
        return unshape(self.choices.get(group))


def unshape(value) -> list[str]:
    """A reply's value of a group (``ChoiceGroup.shape``) as the list of values chosen."""
    return list(value) if isinstance(value, list) else [] if value is None else [value]


def annotated(
    spans: Sequence[dict], chosen: dict[str, list[str]], schema: LabelSchema
) -> Annotated:
    """A human annotation for ``schema``: its spans and each group's values (none: null/[])."""
    shaped = {g.name: g.shape(chosen.get(g.name) or []) for g in schema.choices}
    return Annotated(spans, shaped, entities=bool(schema.labels))


@dataclass
class Example:
    text: str
    entities: list[dict]  # {"label", "text", "occurrence"?} in text order
    spans: list[dict] | None = None  # the same entities as {"start", "end", "label"}, when known
    answer_text: str | None = field(
        default=None, repr=False, compare=False
    )  # answer(self), kept once made
    choices: dict | None = None  # the reply's "choices" object (None: the config has no <Choices>)
    shows_entities: bool = True  # False: the config has no <Labels>

    def chosen(self, group: str) -> list[str]:
        """The values this demonstration chose in ``group``."""
        return unshape((self.choices or {}).get(group))


def example_from_spans(text: str, spans: Sequence[dict], *, like: Example | None = None) -> Example:
    """A demonstration's expected output: its entities in text order, with occurrence hints where
    alignment needs them: a later mention, or a first one inside a longer word ("Ga-CAU-11A")
    when a whole-word mention comes later (alignment would prefer that one). Its choices come
    from ``spans`` when an ``Annotated``, else from ``like`` (an excerpt keeps its task's)."""
    ents, ordered = [], sorted(spans, key=lambda s: (s["start"], s["end"]))
    for s in ordered:
        e = {"label": s["label"], "text": text[s["start"] : s["end"]]}
        occ = occurrence_of(text, s["start"], s["end"])
        if occ and (occ > 1 or not is_whole_word(text, s["start"], s["end"])):
            e["occurrence"] = occ
        ents.append(e)
    source = spans if isinstance(spans, Annotated) else None
    choices = source.choices if source is not None else like.choices if like else None
    shows = source.entities if source is not None else like.shows_entities if like else True
    return Example(
        text,
        ents,
        [{"start": s["start"], "end": s["end"], "label": s["label"]} for s in ordered],
        choices=choices or None,
        shows_entities=shows,
    )


def answer(example: Example) -> str:
    """The assistant message that demonstrates ``example`` (made once: demonstrations recur)."""
    if example.answer_text is None:
        body = {"entities": example.entities} if example.shows_entities else {}
        if example.choices is not None:
            body["choices"] = example.choices
        example.answer_text = json.dumps(body, ensure_ascii=False)
    return example.answer_text


def _choices_schema(groups: Sequence[ChoiceGroup]) -> dict:
    """One property per group: an enum of its values (a list of them when multiple; null allowed
    for a single one, since annotators may leave a group unanswered)."""
    props = {}
    for g in groups:
        one = {"type": "string", "enum": list(g.values)}
        props[g.name] = (
            {"type": "array", "items": one}
            if g.multiple
            else {"type": ["string", "null"], "enum": [*g.values, None]}
        )
    return {
        "type": "object",
        "properties": props,
        "required": [g.name for g in groups],
        "additionalProperties": False,
    }


def response_schema(labels: Sequence[str], groups: Sequence[ChoiceGroup] = ()) -> dict:
    """``response_format`` for structured outputs: the reply shape, labels restricted to the set
    and each <Choices> group to its values. No labels: the reply has only the choices.

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
    props = {"entities": {"type": "array", "items": item}} if labels else {}
    if groups:
        props["choices"] = _choices_schema(groups)
    schema = {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }
    name = "entities" if labels else "choices"
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "strict": True, "schema": schema},
    }


class PromptBuilder:
    def __init__(self, schema: LabelSchema, *, role: str = DEFAULT_ROLE, task: str | None = None):
        self.schema = schema
        self.role = role
        self.task_given = task
        self.task = (
            task
            or "Your task is to find every mention of the entity types defined below in the input text."
        )

    def system(self) -> str:
        if getattr(self, "_system", None) is None:
            self._system = self._make_system()
        return self._system

    def _make_system(self) -> str:
        if not self.schema.choices:
            return self._entities_system()
        if not self.schema.labels:
            return self._choices_system()
        return (
            self._entities_system().rsplit("\n\nOutput format:", 1)[0]
            + "\n\n"
            + self._groups_text()
            + "\n\nOutput format:\n"
            'Answer with one JSON object {"entities": [...], "choices": {...}}. Each item of '
            '"entities" is {"label": <one of the labels above>, "text": <the exact words copied '
            'from the input>}; add "occurrence": n (1 = first) when the same words occur more than '
            "once in the input and you mean a later mention. List entities in the order they "
            'appear, list a repeated mention once per mention ("entities": [] if there are none). '
            f'"choices" answers every category group: {self._shapes()}. Do not explain.'
        )

    def _entities_system(self) -> str:
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

    def _groups_text(self) -> str:
        parts = []
        for g in self.schema.choices:
            hints = dict(g.descriptions)
            defs = "\n".join(
                f'- "{v}"' + (f": {hints[v]}" if hints.get(v) else "") for v in g.values
            )
            many = "every category that applies" if g.multiple else "exactly one category"
            parts.append(
                f'Category group "{g.name}" (choose {many}; use exactly these values):\n{defs}'
            )
        return "\n\n".join(parts)

    def _shapes(self) -> str:
        return ", ".join(
            f'"{g.name}": '
            + ("[<zero or more of its values>]" if g.multiple else "<one of its values>")
            for g in self.schema.choices
        )

    def _choices_system(self) -> str:
        many = any(g.multiple for g in self.schema.choices)
        task = self.task_given or (
            "Your task is to choose "
            + ("the categories that apply to" if many else "the category of")
            + " the input text in every category group defined below."
        )
        return (
            f"{self.role}\n\nTask description:\n{task}\n\n{self._groups_text()}\n\n"
            f'Output format:\nAnswer with one JSON object {{"choices": {{{self._shapes()}}}}}. '
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


def _json(reply: str):
    body = reply.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1)
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise ReplyError(f"reply is not JSON ({e.msg} at char {e.pos}): {reply[:120]!r}") from None


def parse_entities(reply: str) -> list[dict]:
    """Entities from a reply: ``{"entities": [...]}`` or a bare list; code fences tolerated."""
    return _entities(_json(reply))


def _entities(data) -> list[dict]:
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


@dataclass
class Reply:
    """A reply read: its entities (not aligned yet) and each group's valid values, in the
    group's order (a single group keeps one)."""

    entities: list[dict]
    choices: dict[str, list[str]]


def parse_answer(reply: str, schema: LabelSchema) -> Reply:
    """The entities and the choices of a reply for ``schema``. Raises ``ReplyError`` (the reply is
    then neither cached nor used) when it is not the JSON asked for, or when a config with only
    <Choices> gets no valid value at all: there is nothing to show for the task."""
    data = _json(reply)
    entities = _entities(data) if schema.labels else []
    raw = data.get("choices") if isinstance(data, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    choices = {}
    for g in schema.choices:
        v = raw.get(g.name)
        given = v if isinstance(v, list) else [v]
        valid = [x for x in g.values if x in given]
        choices[g.name] = valid if g.multiple else valid[:1]
    answered = any(choices.values()) or any(
        g.multiple and isinstance(raw.get(g.name), list) for g in schema.choices
    )
    if not schema.labels and not answered:
        raise ReplyError(f"the reply named no valid choice: {reply[:120]!r}")
    return Reply(entities, choices)
