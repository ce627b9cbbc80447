"""Pre-annotation of unlabeled tasks from the k most similar human-annotated tasks.

Two annotators share one interface, ``annotate(text, demos) -> PreAnnotation``:

* ``LLMAnnotator``: the paper's method - an LLM prompted with the demonstrations.
* ``ProjectionAnnotator``: the embedded offline default when no LLM is configured. It labels
  every string that a retrieved demonstration labeled and that also occurs in the task. It is a
  baseline, named as such in logs and in the model version, not a substitute for the LLM.

Confidence (``PreAnnotation.score``, in [0, 1]; Label Studio reviews the lowest first):

* with token log-probabilities from the endpoint: the geometric-mean probability of the reply's
  tokens, exp(mean logprob); each span gets exp(mean logprob) of the tokens that spell its text;
* otherwise: the mean similarity between the task and its demonstrations (the paper's
  Appendix C: low demonstration similarity goes with high LLM uncertainty); projection spans
  get the similarity of the demonstration they were copied from.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .llm import LLMClient, LLMError, estimate_tokens, run_bounded, token_cost
from .prompting import Example, LabelSchema, PromptBuilder, ReplyError, parse_entities
from .retrieval import retrieve
from .similarity import Similarity
from .spans import Span, align_entities, exact_positions, is_whole_word, occurrence_of

log = logging.getLogger(__name__)

PROJECTION_NAME = "projection-offline"


@dataclass
class Demo:
    example: Example
    similarity: float


@dataclass
class PreAnnotation:
    spans: list[Span]
    score: float
    annotator: str
    confidence_source: str  # "logprobs" | "similarity"
    dropped_not_found: int = 0
    dropped_bad_label: int = 0
    cached: bool = False

    def to_dict(self) -> dict:
        return {
            "entities": [s.to_dict() for s in self.spans],
            "score": self.score,
            "annotator": self.annotator,
            "confidence_source": self.confidence_source,
            "dropped_not_found": self.dropped_not_found,
            "dropped_bad_label": self.dropped_bad_label,
            "cached": self.cached,
        }


def example_from_spans(text: str, spans: Sequence[dict]) -> Example:
    """A demonstration's expected output: its entities in text order, with occurrence hints."""
    ents = []
    for s in sorted(spans, key=lambda s: (s["start"], s["end"])):
        e = {"label": s["label"], "text": text[s["start"] : s["end"]]}
        occ = occurrence_of(text, s["start"], s["end"])
        if occ and occ > 1:
            e["occurrence"] = occ
        ents.append(e)
    return Example(text, ents)


def _similarity_confidence(demos: list[Demo]) -> float:
    if not demos:
        return 0.0
    return float(min(1.0, max(0.0, sum(d.similarity for d in demos) / len(demos))))


class ProjectionAnnotator:
    """Offline default: project the demonstrations' labeled strings onto the task."""

    name = PROJECTION_NAME

    def __init__(self, schema: LabelSchema):
        self.schema = schema

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
        return PreAnnotation(spans, _similarity_confidence(demos), self.name, "similarity")


class LLMAnnotator:
    """The paper's annotator: k retrieved demonstrations in an ICL prompt, parsed and aligned."""

    def __init__(self, client: LLMClient, schema: LabelSchema, prompt: PromptBuilder | None = None):
        self.client = client
        self.schema = schema
        self.prompt = prompt or PromptBuilder(schema)
        self.name = f"llm-{client.config.model}"

    def messages(self, text: str, demos: list[Demo]) -> list[dict]:
        return self.prompt.messages([d.example for d in demos], text)

    def annotate(self, text: str, demos: list[Demo]) -> PreAnnotation:
        # A malformed reply raises ReplyError and is not cached.
        completion = self.client.complete(self.messages(text, demos), validate=parse_entities)
        entities = parse_entities(completion.text)
        aligned = align_entities(text, entities, self.schema.labels)
        spans = aligned.spans
        if completion.logprobs:
            score = math.exp(sum(lp for _, lp in completion.logprobs) / len(completion.logprobs))
            spans = _span_logprob_scores(completion.text, completion.logprobs, spans)
            source = "logprobs"
        else:
            score, source = _similarity_confidence(demos), "similarity"
        return PreAnnotation(
            spans, float(score), self.name, source,
            dropped_not_found=len(aligned.not_found), dropped_bad_label=len(aligned.bad_label), cached=completion.cached,
        )


def _span_logprob_scores(reply: str, logprobs: list[tuple[str, float]], spans: list[Span]) -> list[Span]:
    """Each span's exp(mean logprob) over the reply tokens that spell its text (first unused place)."""
    offsets, pos = [], 0
    for token, _ in logprobs:
        offsets.append((pos, pos + len(token)))
        pos += len(token)
    if "".join(t for t, _ in logprobs) != reply:
        return spans  # tokens do not spell the reply (some servers): keep spans unscored
    out, cursor = [], 0
    for s in spans:
        needle = json.dumps(s.text, ensure_ascii=False)[1:-1]
        at = reply.find(needle, cursor)
        if at < 0:
            at = reply.find(needle)
        if at < 0:
            out.append(s)
            continue
        cursor = at + len(needle)
        lps = [lp for (a, b), (_, lp) in zip(offsets, logprobs) if a < at + len(needle) and b > at]
        out.append(Span(s.start, s.end, s.label, s.text, round(math.exp(sum(lps) / len(lps)), 6) if lps else None))
    return out


@dataclass
class PrelabelResult:
    index: int
    annotation: PreAnnotation | None
    error: str | None = None


def unlabeled(texts: Sequence[str], gold: dict[int, list[dict]]) -> list[int]:
    """Indices of the tasks without gold spans: the default queries."""
    return [i for i in range(len(texts)) if i not in gold]


def build_demos(texts: Sequence[str], gold: dict[int, list[dict]], sim: Similarity, queries: Sequence[int], k: int) -> list[list[Demo]]:
    """The k most similar annotated tasks for each query, as prompt examples."""
    found = retrieve(sim, queries, sorted(gold), k)
    return [[Demo(example_from_spans(texts[d.index], gold[d.index]), d.similarity) for d in row] for row in found]


def prelabel(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    queries: Sequence[int] | None = None,
    k: int = 3,
    concurrency: int = 1,
    on_done: Callable[[PrelabelResult], None] | None = None,
) -> list[PrelabelResult]:
    """Pre-annotate ``queries`` (default: every task without gold spans) from the annotated ones.

    ``gold`` maps task index -> spans ({start, end, label}). One task's failure is recorded in
    its result and never stops the others.
    """
    if not gold:
        raise ValueError("no annotated tasks to learn from: annotate some tasks first (or lower the budget)")
    queries = unlabeled(texts, gold) if queries is None else list(queries)
    demos = build_demos(texts, gold, sim, queries, k)

    def one(j: int) -> PrelabelResult:
        i = queries[j]
        try:
            return PrelabelResult(i, annotator.annotate(texts[i], demos[j]))
        except (LLMError, ReplyError) as e:
            log.warning("task %d: pre-annotation failed: %s", i, e)
            return PrelabelResult(i, None, f"{type(e).__name__}: {e}")

    def done(_, result):
        if on_done is not None and isinstance(result, PrelabelResult):
            on_done(result)

    results = run_bounded(one, range(len(queries)), concurrency, done)
    return [r if isinstance(r, PrelabelResult) else PrelabelResult(queries[j], None, f"{type(r).__name__}: {r}") for j, r in enumerate(results)]


def dry_run(texts: Sequence[str], gold: dict[int, list[dict]], annotator: LLMAnnotator, sim: Similarity, *, k: int = 3, queries=None) -> dict:
    """Token and cost estimate for a bulk run, without calling the LLM."""
    queries = unlabeled(texts, gold) if queries is None else list(queries)
    demos = build_demos(texts, gold, sim, queries, k)
    client = annotator.client
    prompt_tokens = cached = 0
    for i, d in zip(queries, demos):
        messages = annotator.messages(texts[i], d)
        prompt_tokens += estimate_tokens("".join(m["content"] for m in messages))
        cached += client.cache is not None and client.cache.get(client.cache_key(messages)) is not None
    # Expected reply length: the average length of the demonstrations' answers.
    answers = [json.dumps({"entities": example_from_spans(texts[i], s).entities}, ensure_ascii=False) for i, s in gold.items()]
    completion_tokens = round(len(queries) * sum(map(estimate_tokens, answers)) / max(1, len(answers)))
    cost = token_cost(prompt_tokens, completion_tokens, client.config.prices())
    return {
        "tasks": len(queries), "already_cached": cached, "model": client.config.model,
        "estimated_prompt_tokens": prompt_tokens, "estimated_completion_tokens": completion_tokens,
        "estimated_cost_usd": None if cost is None else round(cost, 4),
        "note": "estimate: ~4 characters per token; replies as long as the demonstrations' answers",
    }
