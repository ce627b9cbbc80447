"""Text classification (Label Studio ``<Choices>``): the paper's ICL recipe on choices, not spans.

* ``ChoiceSchema``: the choice values, their ``hint`` descriptions, one answer or several
  (``choice="single"``/``"single-radio"`` vs ``"multiple"``).
* ``ChoicePromptBuilder``: the paper's prompt structure (Appendix A) - role, task, the choices
  with their descriptions, the k most similar annotated tasks as demonstrations, the input.
* ``LLMClassifier``: structured outputs restricted to an enum of the values (the client falls back
  json_schema -> json_object -> none as for spans); confidence = exp(mean logprob) of the reply
  where the endpoint gives log-probabilities, else the demonstrations' mean similarity.
* ``MajorityClassifier``: the offline fallback - the similarity-weighted vote of the demonstrations.
* ``classification_metrics`` and ``leave_one_out_choices``: accuracy and per-class P/R/F1.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from alllabel.llm.client import Completion, LLMClient
from alllabel.llm.tokens import TokenCounter
from alllabel.prelabel.prompt import DEFAULT_ROLE, EXAMPLE_PREFIX, INPUT_PREFIX
from alllabel.selection.retrieval import retrieve
from alllabel.selection.similarity import Similarity

CLASSIFY_FORMAT = 1  # bump when the prompt's wording changes: cached answers then go stale


@dataclass(frozen=True)
class ChoiceSchema:
    choices: tuple[str, ...]
    descriptions: dict[str, str] = field(default_factory=dict)
    multiple: bool = False


@dataclass(frozen=True)
class ChoiceDemo:
    """An annotated task shown as a demonstration: its text, its choices, its similarity."""

    text: str
    choices: tuple[str, ...]
    similarity: float
    index: int | None = None


@dataclass
class Classification:
    choices: list[str]
    score: float  # in [0, 1]: Label Studio's prediction score; review shows the lowest first
    confidence_source: str  # "logprobs" | "similarity" | "vote"
    cost_usd: float | None = None
    cached: bool = False
    billed_usd: float = 0.0  # what the endpoint billed for this answer now (0 when cached)


def response_schema(schema: ChoiceSchema) -> dict:
    """``response_format``: the reply restricted to the choice values (an enum)."""
    enum = {"type": "string", "enum": list(schema.choices)}
    value = {"type": "array", "items": enum} if schema.multiple else enum
    body = {
        "type": "object",
        "properties": {"choices" if schema.multiple else "choice": value},
        "required": ["choices" if schema.multiple else "choice"],
        "additionalProperties": False,
    }
    return {
        "type": "json_schema",
        "json_schema": {"name": "choice", "strict": True, "schema": body},
    }


def answer(schema: ChoiceSchema, choices: Sequence[str]) -> str:
    """The reply a demonstration shows, in the shape the output format asks for."""
    if schema.multiple:
        return json.dumps({"choices": list(choices)}, ensure_ascii=False)
    return json.dumps({"choice": choices[0] if choices else None}, ensure_ascii=False)


class ChoicePromptBuilder:
    def __init__(self, schema: ChoiceSchema, *, role: str = DEFAULT_ROLE, task: str | None = None):
        self.schema = schema
        self.role = role
        many = "every category that applies to" if schema.multiple else "the one category of"
        self.task = task or f"Your task is to choose {many} the input text."

    def system(self) -> str:
        defs = "\n".join(
            f'- "{c}"'
            + (f": {self.schema.descriptions[c]}" if self.schema.descriptions.get(c) else "")
            for c in self.schema.choices
        )
        shape = (
            '{"choices": [<zero or more of the categories above>]}'
            if self.schema.multiple
            else '{"choice": <exactly one of the categories above>}'
        )
        return (
            f"{self.role}\n\nTask description:\n{self.task}\n\n"
            f"Categories (use exactly these values, nothing else):\n{defs}\n\n"
            f"Output format:\nAnswer with one JSON object {shape}. Do not explain."
        )

    def messages(self, demos: Sequence[ChoiceDemo], text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system()}]
        for i, d in enumerate(demos, start=1):
            msgs.append({"role": "user", "content": EXAMPLE_PREFIX.format(n=i) + d.text})
            msgs.append({"role": "assistant", "content": answer(self.schema, d.choices)})
        msgs.append({"role": "user", "content": INPUT_PREFIX + text})
        return msgs

    def fingerprint(self, *settings: object) -> str:
        material = json.dumps([CLASSIFY_FORMAT, self.system(), *map(str, settings)])
        return hashlib.sha256(material.encode()).hexdigest()[:16]


def parse_choices(text: str, schema: ChoiceSchema) -> list[str]:
    """The valid choices in a reply (code fences and prose around the JSON tolerated); raises
    ``ValueError`` when there is no JSON object, so a malformed reply is not cached."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"no JSON object in the reply: {text[:80]!r}")
    data = json.loads(text[start : end + 1])
    raw = data.get("choices", data.get("choice"))
    values = raw if isinstance(raw, list) else [raw]
    valid = [v for v in schema.choices if v in values]  # in schema order, no duplicates
    return valid if schema.multiple else valid[:1]


def mean_similarity(demos: Sequence[ChoiceDemo]) -> float:
    if not demos:
        return 0.0
    return round(max(0.0, min(1.0, sum(d.similarity for d in demos) / len(demos))), 6)


class MajorityClassifier:
    """Offline: the demonstrations vote, each with its similarity as weight (at least a tiny one,
    so equal-zero similarities still vote). Score = the winners' weakest share of the vote."""

    name = "majority-offline"

    def __init__(self, schema: ChoiceSchema):
        self.schema = schema

    def worst_case_usd(self, text: str, demos: Sequence[ChoiceDemo]) -> float:
        return 0.0

    def classify(self, text: str, demos: Sequence[ChoiceDemo]) -> Classification:
        if not demos:
            return Classification([], 0.0, "vote")
        s = self.schema
        chosen, score = vote(s.choices, s.multiple, [(d.choices, d.similarity) for d in demos])
        return Classification(chosen, score, "vote")


def vote(
    values: Sequence[str], multiple: bool, answers: Sequence[tuple[Sequence[str], float]]
) -> tuple[list[str], float]:
    """The similarity-weighted vote of demonstrations' answers (each weighs at least a tiny bit,
    so equal-zero similarities still vote): the values with half the vote or more (multiple),
    else the best one; score = the winners' weakest share (multiple, none won: 1 - the best)."""
    weight = {c: 0.0 for c in values}
    total = 0.0
    for chosen, similarity in answers:
        w = max(similarity, 1e-6)
        total += w
        for c in chosen:
            if c in weight:
                weight[c] += w
    if total == 0:
        return [], 0.0
    share = {c: w / total for c, w in weight.items()}
    if multiple:
        won = [c for c in values if share[c] >= 0.5]
        return won, round(min((share[c] for c in won), default=1 - max(share.values())), 6)
    best = max(values, key=lambda c: (share[c], -list(values).index(c)))
    return [best], round(share[best], 6)


class LLMClassifier:
    """The paper's annotator on choices: one call per task, its reply restricted to the values."""

    def __init__(self, client: LLMClient, schema: ChoiceSchema, prompt: ChoicePromptBuilder = None):
        self.client = client
        self.schema = schema
        self.prompt = prompt or ChoicePromptBuilder(schema)
        self.name = f"llm-{client.config.model}"

    def worst_case_usd(self, text: str, demos: Sequence[ChoiceDemo]) -> float:
        """At most what classifying this task can be billed (0 when its answer is cached)."""
        messages, client = self.prompt.messages(demos, text), self.client
        if client.cache is not None and client.cache.get(client.cache_key(messages)) is not None:
            return 0.0
        tokens = TokenCounter(client.config.model, client.config.token_margin).messages(messages)
        return client.config.worst_case_usd(tokens) or 0.0

    def classify(self, text: str, demos: Sequence[ChoiceDemo]) -> Classification:
        c = self.client.complete(
            self.prompt.messages(demos, text),
            lambda reply: parse_choices(reply, self.schema),
            schema=response_schema(self.schema),
        )
        chosen = c.parsed if c.parsed is not None else parse_choices(c.text, self.schema)
        score, source = reply_confidence(c, demos)
        prices = self.client.config.prices()
        cost = c.cost(prices) if prices else None
        return Classification(chosen, score, source, cost, c.cached, c.billed_usd)


def reply_confidence(c: Completion, demos: Sequence[ChoiceDemo]) -> tuple[float, str]:
    """exp(mean logprob) of the reply's tokens (the enum values are short: the choice dominates),
    else the demonstrations' mean similarity (paper Appendix C)."""
    if c.logprobs:
        return round(math.exp(sum(lp for _, lp in c.logprobs) / len(c.logprobs)), 6), "logprobs"
    return mean_similarity(demos), "similarity"


def choice_demos(
    texts: Sequence[str],
    gold: dict[int, Sequence[str]],
    sim: Similarity,
    queries: Sequence[int],
    k: int,
) -> list[list[ChoiceDemo]]:
    """The k most similar annotated tasks of each query (never the query itself)."""
    rows = retrieve(sim, queries, sorted(gold), k)
    return [
        [ChoiceDemo(texts[d.index], tuple(gold[d.index]), d.similarity, d.index) for d in row]
        for row in rows
    ]


def classification_metrics(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], choices: Sequence[str]
) -> dict:
    """Accuracy (the whole answer right), per-class precision/recall/F1 and their macro F1."""
    per_class = {}
    for c in choices:
        tp = sum(c in g and c in p for g, p in zip(gold, pred))
        fp = sum(c not in g and c in p for g, p in zip(gold, pred))
        fn = sum(c in g and c not in p for g, p in zip(gold, pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    right = sum(set(g) == set(p) for g, p in zip(gold, pred))
    return {
        "n": len(gold),
        "accuracy": right / len(gold) if gold else 0.0,
        "macro_f1": sum(v["f1"] for v in per_class.values()) / len(per_class) if per_class else 0.0,
        "per_class": per_class,
    }


def leave_one_out_choices(
    texts: Sequence[str], gold: dict[int, Sequence[str]], sim: Similarity, classifier, k: int = 3
) -> dict:
    """Each annotated task classified from the k most similar other annotated tasks, scored
    against its human answer: the quality to expect before a bulk run."""
    queries = sorted(gold)
    demos = choice_demos(texts, gold, sim, queries, k)
    answers = [classifier.classify(texts[i], row) for i, row in zip(queries, demos)]
    m = classification_metrics(
        [gold[i] for i in queries], [a.choices for a in answers], classifier.schema.choices
    )
    return {**m, "billed_usd": sum(a.billed_usd for a in answers)}
