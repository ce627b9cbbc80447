"""The annotators, and the small protocols a run asks them for instead of their class.

Every annotator has a ``name`` and a ``version(demos, prompts)`` (``Versioned``). Then either:

* ``Direct``: it answers a task itself, ``annotate(text, demos) -> PreAnnotation``
  (``ProjectionAnnotator``, the offline default: it labels every string a retrieved demonstration
  labeled and that also occurs in the task - a baseline, named as such, not a substitute for the
  LLM); or
* ``Prompted``: it needs prompts answered. A run asks it for each task's prompts (``prompts``: one
  per window, within ``ALLABEL_MAX_PROMPT_TOKENS``, ``alllabel.prelabel.fit``), has them answered
  by an executor (``executor``: online, or the Batch API, ``alllabel.prelabel.executors``), and
  hands the answers back to ``read``: parse -> align -> score (``LLMAnnotator``, the paper's).

Both answer every group of the schema at once: the spans of the <Labels> groups and the values of
the <Choices> groups (``LabelSchema.choices``; offline, the demonstrations' weighted vote).

``Priced`` annotators have prices, so a cost cap and an estimate apply to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from alllabel.llm.client import Completion, LLMClient
from alllabel.llm.tokens import TokenCounter
from alllabel.prelabel.annotation import (
    PreAnnotation,
    choice_logprob_scores,
    content_logprobs,
    make_version,
    similarity_confidence,
    span_logprob_scores,
    task_score,
)
from alllabel.prelabel.classify import vote
from alllabel.prelabel.executors import BatchExecutor, Executor, OnlineExecutor
from alllabel.prelabel.fit import PromptFitter, TaskPrompts
from alllabel.prelabel.prompt import (
    Example,
    LabelSchema,
    PromptBuilder,
    Reply,
    example_from_spans,
    parse_answer,
    response_schema,
)
from alllabel.selection.retrieval import retrieve
from alllabel.selection.similarity import Similarity
from alllabel.text.spans import Span, align_entities, exact_positions, is_whole_word

PROJECTION_NAME = "projection-offline"


@dataclass
class Demo:
    """A demonstration as a prompt shows it: the annotated task (text and entities), its
    similarity to the query, and its index in the caller's task list."""

    example: Example
    similarity: float
    index: int | None = None


@runtime_checkable
class Versioned(Protocol):
    name: str

    def version(self, demos: list[Demo], prompts: TaskPrompts | None = None) -> dict: ...


@runtime_checkable
class Direct(Protocol):
    def annotate(self, text: str, demos: list[Demo]) -> PreAnnotation: ...


@runtime_checkable
class Prompted(Protocol):
    concurrency: int

    def prompts(self, text: str, demos: list[Demo]) -> TaskPrompts: ...

    def executor(
        self,
        *,
        batch: bool | None = None,
        on_billed: Callable[[float], None] | None = None,
        run_key: str | None = None,
        wait: float | None = None,
    ) -> Executor: ...

    def read(
        self, text: str, demos: list[Demo], prompts: TaskPrompts, answers: list[Completion]
    ) -> PreAnnotation: ...


@runtime_checkable
class Priced(Protocol):
    batch: bool  # its runs go through the Batch API by default

    def prices(self) -> tuple[float, float] | None: ...

    def worst_case_usd(
        self, prompts: TaskPrompts, *, batch: bool, cached_at_price: bool = False
    ) -> float: ...


class ProjectionAnnotator:
    """Offline default: project the demonstrations' labeled strings onto the task."""

    name = PROJECTION_NAME

    def __init__(self, schema: LabelSchema):
        self.schema = schema

    def fingerprint(self) -> str:
        groups = [[g.name, list(g.values), g.multiple] for g in self.schema.choices]
        material = ["projection", 1, self.schema.labels] + ([groups] if groups else [])
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:16]

    def version(self, demos: list[Demo], prompts: TaskPrompts | None = None) -> dict:
        return make_version(self.name, self.name, self.fingerprint(), demos)

    def annotate(self, text: str, demos: list[Demo]) -> PreAnnotation:
        best: dict[tuple[str, str], float] = {}
        for d in demos:
            for e in d.example.entities:
                key = (e["label"], e["text"])
                best[key] = max(best.get(key, -math.inf), d.similarity)
        spans: list[Span] = []
        # Every whole-word exact mention, longest strings first, no overlaps within a label.
        for (label, value), sim in sorted(best.items(), key=lambda kv: (-len(kv[0][1]), kv[0])):
            if label not in self.schema.labels or not value.strip():
                continue
            for start in exact_positions(text, value):
                end = start + len(value)
                if is_whole_word(text, start, end) and not any(
                    o.label == label and start < o.end and o.start < end for o in spans
                ):
                    spans.append(Span(start, end, label, value, round(max(0.0, min(1.0, sim)), 6)))
        spans.sort(key=lambda s: (s.start, s.end, s.label))
        reply = similarity_confidence(demos)
        choices, scores = self._vote(demos)
        return PreAnnotation(
            spans,
            task_score(spans, reply, (), list(scores.values())),
            self.name,
            "similarity",
            reply_score=reply,
            version=self.version(demos),
            choices=choices,
            choice_scores=scores,
        )

    def _vote(self, demos: list[Demo]) -> tuple[dict[str, list[str]], dict[str, float]]:
        """Each <Choices> group: the demonstrations' similarity-weighted vote (``classify.vote``)."""
        choices, scores = {}, {}
        for g in self.schema.choices:
            answers = [(d.example.chosen(g.name), d.similarity) for d in demos]
            chosen, score = vote(g.values, g.multiple, answers)
            if chosen:
                choices[g.name], scores[g.name] = chosen, score
        return choices, scores


class LLMAnnotator:
    """The paper's annotator: k retrieved demonstrations in an ICL prompt, parsed and aligned."""

    def __init__(
        self,
        client: LLMClient,
        schema: LabelSchema,
        prompt: PromptBuilder | None = None,
        *,
        max_prompt_tokens: int | None = None,
    ):
        self.client = client
        self.schema = schema
        self.prompt = prompt or PromptBuilder(schema)
        cfg = client.config
        self.counter = TokenCounter(cfg.model, cfg.token_margin)
        self.max_prompt_tokens = max_prompt_tokens or cfg.max_prompt_tokens
        self.fitter = PromptFitter(
            self.prompt, self.counter, self.max_prompt_tokens, max_reply_tokens=cfg.max_tokens
        )
        self.response_schema = response_schema(schema.labels, schema.choices)
        self.name = f"llm-{cfg.model}"
        self.concurrency = cfg.concurrency
        self.batch = cfg.batch

    def fingerprint(self) -> str:
        """Hash of everything that makes this annotator's prompts (and sampling) what they are."""
        cfg = self.client.config
        return self.prompt.fingerprint(
            cfg.model,
            cfg.temperature,
            cfg.max_tokens,
            cfg.response_format,
            self.max_prompt_tokens,
            self.counter.spec,
        )

    def prompts(self, text: str, demos: list[Demo]) -> TaskPrompts:
        """The prompts this task needs (one per window), within the prompt limit; no call made."""
        return self.fitter.fit(text, [d.example for d in demos])

    def version(self, demos: list[Demo], prompts: TaskPrompts | None = None) -> dict:
        shown = range(len(demos)) if prompts is None else prompts.demos
        return make_version(
            self.name, self.client.config.model, self.fingerprint(), [demos[p] for p in shown]
        )

    def messages(self, text: str, demos: list[Demo]) -> list[list[dict]]:
        """The prompt of each window."""
        return [w.messages for w in self.prompts(text, demos).windows]

    def prices(self) -> tuple[float, float] | None:
        return self.client.config.prices()

    def executor(
        self,
        *,
        batch: bool | None = None,
        on_billed: Callable[[float], None] | None = None,
        run_key: str | None = None,
        wait: float | None = None,
    ) -> Executor:
        """What answers this annotator's prompts: online, or through the Batch API (its
        bookkeeping under ``run_key``, polled ``wait`` seconds at most; None: until done)."""
        args = (self.client, self.response_schema, self.parse)
        if self.batch if batch is None else batch:
            return BatchExecutor(*args, on_billed=on_billed, run_key=run_key, wait=wait)
        return OnlineExecutor(*args, on_billed=on_billed)

    def worst_case_usd(
        self, prompts: TaskPrompts, *, batch: bool, cached_at_price: bool = False
    ) -> float:
        """US$ a task can cost at most: each window's counted prompt plus a full ``max_tokens``
        reply; an answer already in the cache is free (``cached_at_price``: counted at the
        price it was bought, for a caller that keeps no spend of its own)."""
        client, total = self.client, 0.0
        for w in prompts.windows:
            hit = client.cache.get(client.cache_key(w.messages)) if client.cache else None
            if hit is None:
                total += client.config.worst_case_usd(w.prompt_tokens, batch=batch) or 0.0
            elif cached_at_price:
                total += hit.cost(self.prices()) or 0.0
        return total

    def parse(self, reply: str) -> Reply:
        """A reply read (``prompt.parse_answer``); raises on one that is not the JSON asked for."""
        return parse_answer(reply, self.schema)

    def read(
        self, text: str, demos: list[Demo], prompts: TaskPrompts, answers: list[Completion]
    ) -> PreAnnotation:
        """Parse -> align -> score each window's answer, merged at exact offsets. Each <Choices>
        group takes the answer of the window most confident in it (a long text's choice is
        the one its clearest window makes)."""
        prices = self.prices()
        spans: list[Span] = []
        replies, source = [], "logprobs"
        dropped_nf = dropped_bl = 0
        choices: dict[str, tuple[float, list[str]]] = {}  # group -> its best window's answer
        for w, c in zip(prompts.windows, answers):
            r = c.parsed if isinstance(c.parsed, Reply) else self.parse(c.text)
            aligned = align_entities(text[w.start : w.end], r.entities, self.schema.labels)
            window_spans, reply, src = _score(c, aligned.spans, demos)
            _keep_surest(choices, _choice_scores(c, r.choices, reply), r.choices)
            spans.extend(
                dataclasses.replace(s, start=s.start + w.start, end=s.end + w.start)
                for s in window_spans
            )
            replies.append(reply)
            source = src if source == "logprobs" else source
            dropped_nf += len(aligned.not_found)
            dropped_bl += len(aligned.bad_label)
        spans.sort(key=lambda sp: (sp.start, sp.end, sp.label))
        reply = min(replies) if replies else similarity_confidence(demos)
        scores = {name: score for name, (score, _) in choices.items()}
        return PreAnnotation(
            spans,
            float(task_score(spans, reply, (), list(scores.values()))),
            self.name,
            source,
            dropped_not_found=dropped_nf,
            dropped_bad_label=dropped_bl,
            cached=all(c.cached for c in answers),
            reply_score=float(reply),
            windows=len(prompts.windows),
            version=self.version(demos, prompts),
            cost_usd=sum(c.cost(prices) or 0.0 for c in answers) if prices else None,
            billed_usd=sum(c.billed_usd for c in answers),
            choices={name: chosen for name, (_, chosen) in choices.items()},
            choice_scores=scores,
        )


def _keep_surest(best: dict, scores: dict[str, float], chosen: dict[str, list[str]]) -> None:
    """Keep, per group, the answer of the window most confident in it."""
    for name, score in scores.items():
        if score > best.get(name, (-1.0, []))[0]:
            best[name] = (score, chosen[name])


def _choice_scores(c: Completion, chosen: dict[str, list[str]], reply: float) -> dict[str, float]:
    """The score of each group that chose something (see ``annotation``'s module doc)."""
    chosen = {name: values for name, values in chosen.items() if values}
    if c.logprobs:
        return choice_logprob_scores(c.text, c.logprobs, chosen, reply)
    return {name: round(reply, 6) for name in chosen}


def _score(c: Completion, spans: list[Span], demos: list[Demo]) -> tuple[list[Span], float, str]:
    if c.logprobs:
        lps = content_logprobs(c.logprobs)
        reply = math.exp(sum(lps) / len(lps))
        return span_logprob_scores(c.text, c.logprobs, spans, reply), reply, "logprobs"
    sim = similarity_confidence(demos)
    return [dataclasses.replace(s, score=round(sim, 6)) for s in spans], sim, "similarity"


def build_demos(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    sim: Similarity,
    queries: Sequence[int],
    k: int,
) -> list[list[Demo]]:
    """Retrieve: the k most similar annotated tasks for each query, as demonstrations."""
    found = retrieve(sim, queries, sorted(gold), k)
    examples: dict[int, Example] = {}  # one Example per demonstration, shared by every prompt

    def example(i: int) -> Example:
        if i not in examples:
            examples[i] = example_from_spans(texts[i], gold[i])
        return examples[i]

    return [[Demo(example(d.index), d.similarity, d.index) for d in row] for row in found]
