"""Pre-annotation of unlabeled tasks from the k most similar human-annotated tasks.

Two annotators share one interface, ``annotate(text, demos) -> PreAnnotation``:

* ``LLMAnnotator``: the paper's method - an LLM prompted with the demonstrations, every prompt
  within ``ALLABEL_MAX_PROMPT_TOKENS`` (``alllabel.prelabel.fit``: long tasks are cut into windows whose
  answers are merged back at exact offsets, long demonstrations are shortened or skipped).
* ``ProjectionAnnotator``: the embedded offline default when no LLM is configured. It labels
  every string that a retrieved demonstration labeled and that also occurs in the task. It is a
  baseline, named as such in logs and in the model version, not a substitute for the LLM.

Confidence - one score per span, and the task's score is its weakest span's:

* span scores, in [0, 1]: with token log-probabilities from the endpoint, exp(mean logprob) of the
  reply tokens that spell the span's text; without them, the mean similarity between the task and
  its demonstrations (paper Appendix C: low demonstration similarity goes with high LLM
  uncertainty); projection spans get the similarity of the demonstration they were copied from;
* ``PreAnnotation.score`` = min over the spans shown, so Label Studio's prediction score (the
  task's, in %) is exactly the lowest region score in the Regions panel, and review ordered by
  it puts the task with the weakest span first;
* a prediction with no spans gets the reply's own score - exp(mean logprob) over all reply tokens
  (min over windows), or the mean demonstration similarity - lowered to the best score of any span
  that ``min_span_score`` dropped, so an emptied prediction still sorts early in review.

Versions: every ``PreAnnotation.version`` records the annotator, the model, the prompt's
fingerprint (wording, labels, definitions and the settings that change prompts) and the indices
of the demonstrations shown; ``stale_reasons`` compares a stored version with ``current_versions``.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from alllabel.llm.client import Completion, LLMClient, LLMError, run_bounded, token_cost
from alllabel.llm.tokens import TokenCounter
from alllabel.prelabel.fit import PromptPlanner, TaskPlan
from alllabel.prelabel.prompt import (
    Example,
    LabelSchema,
    PromptBuilder,
    ReplyError,
    answer,
    example_from_spans,
    parse_entities,
    response_schema,
)
from alllabel.prelabel.spend import SpendGuard
from alllabel.selection.retrieval import retrieve
from alllabel.selection.similarity import Similarity
from alllabel.text.spans import Span, align_entities, exact_positions, is_whole_word

log = logging.getLogger(__name__)

PROJECTION_NAME = "projection-offline"
__all__ = [
    "Demo",
    "PreAnnotation",
    "PrelabelResult",
    "PrelabelResults",
    "RunEstimate",
    "LLMAnnotator",
    "ProjectionAnnotator",
    "RunPlan",
    "build_demos",
    "current_versions",
    "estimate_run",
    "example_from_spans",
    "plan_run",
    "prelabel",
    "stale_reasons",
    "unlabeled",
]


@dataclass
class Demo:
    example: Example
    similarity: float
    index: int | None = None  # the demonstration's index in the caller's task list


@dataclass
class PreAnnotation:
    spans: list[Span]
    score: float
    annotator: str
    confidence_source: str  # "logprobs" | "similarity"
    dropped_not_found: int = 0
    dropped_bad_label: int = 0
    cached: bool = False
    dropped_low_score: int = 0
    reply_score: float | None = None  # the reply's own score (used when no span is shown)
    windows: int = 1
    version: dict | None = None
    cost_usd: float | None = None  # what its answers cost when bought (cached ones included)
    new_cost_usd: float | None = None  # what this run paid for them

    def to_dict(self) -> dict:
        return {
            "entities": [s.to_dict() for s in self.spans],
            "score": self.score,
            "annotator": self.annotator,
            "confidence_source": self.confidence_source,
            "dropped_not_found": self.dropped_not_found,
            "dropped_bad_label": self.dropped_bad_label,
            "dropped_low_score": self.dropped_low_score,
            "windows": self.windows,
            "cached": self.cached,
            "version": self.version,
        }


def task_score(spans: Sequence[Span], reply_score: float, dropped: Sequence[float] = ()) -> float:
    """The prediction's score: its weakest span's; with none shown, the reply's score, lowered to
    the best dropped span's (see the module doc)."""
    scores = [s.score for s in spans if s.score is not None]
    if scores:
        return min(scores)
    return min([reply_score, max(dropped)]) if dropped else reply_score


def apply_min_span_score(a: PreAnnotation, threshold: float | None) -> PreAnnotation:
    """Drop spans scored below ``threshold`` and re-score the prediction (``task_score``)."""
    if threshold is None:
        return a
    kept = [s for s in a.spans if s.score is None or s.score >= threshold]
    dropped = [s.score for s in a.spans if s.score is not None and s.score < threshold]
    if not dropped:
        return a
    reply = a.reply_score if a.reply_score is not None else a.score
    return replace(
        a,
        spans=kept,
        score=task_score(kept, reply, dropped),
        dropped_low_score=a.dropped_low_score + len(dropped),
    )


def _similarity_confidence(demos: list[Demo]) -> float:
    if not demos:
        return 0.0
    return float(min(1.0, max(0.0, sum(d.similarity for d in demos) / len(demos))))


def _version(annotator: str, model: str, prompt: str, demos: Sequence[Demo]) -> dict:
    return {
        "annotator": annotator,
        "model": model,
        "prompt": prompt,
        "demos": [d.index for d in demos],
    }


class ProjectionAnnotator:
    """Offline default: project the demonstrations' labeled strings onto the task."""

    name = PROJECTION_NAME

    def __init__(self, schema: LabelSchema):
        self.schema = schema

    def fingerprint(self) -> str:
        return hashlib.sha256(
            json.dumps(["projection", 1, self.schema.labels]).encode()
        ).hexdigest()[:16]

    def version(self, demos: list[Demo]) -> dict:
        return _version(self.name, self.name, self.fingerprint(), demos)

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
        reply = _similarity_confidence(demos)
        return PreAnnotation(
            spans,
            task_score(spans, reply),
            self.name,
            "similarity",
            reply_score=reply,
            version=self.version(demos),
        )


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
        self.planner = PromptPlanner(
            self.prompt, self.counter, self.max_prompt_tokens, max_reply_tokens=cfg.max_tokens
        )
        self.response_schema = response_schema(schema.labels)
        self.name = f"llm-{cfg.model}"

    def online(self) -> "LLMAnnotator":
        """The same annotator answering at once (not through the Batch API), on the same cache."""
        if not self.client.config.batch:
            return self
        client = LLMClient(dataclasses.replace(self.client.config, batch=False), self.client.cache)
        return LLMAnnotator(
            client, self.schema, self.prompt, max_prompt_tokens=self.max_prompt_tokens
        )

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

    def plan(self, text: str, demos: list[Demo]) -> TaskPlan:
        """The prompts this task needs (one per window), within the token budget; no call made."""
        return self.planner.plan(text, [d.example for d in demos])

    def version(self, plan: TaskPlan, demos: list[Demo]) -> dict:
        return _version(
            self.name, self.client.config.model, self.fingerprint(), [demos[p] for p in plan.demos]
        )

    def messages(self, text: str, demos: list[Demo]) -> list[list[dict]]:
        """The prompt of each window."""
        return [w.messages for w in self.plan(text, demos).windows]

    def annotate(
        self,
        text: str,
        demos: list[Demo],
        plan: TaskPlan | None = None,
        *,
        cache_only: bool = False,
    ) -> PreAnnotation:
        """Call the LLM for each window of ``plan`` (default: ``self.plan``) and merge the answers."""
        plan = plan or self.plan(text, demos)
        prices = self.client.config.prices()
        spans: list[Span] = []
        replies, cost, new_cost = [], 0.0, 0.0
        dropped_nf = dropped_bl = 0
        cached, source = True, "logprobs"
        for w in plan.windows:
            # A malformed reply raises ReplyError and is not cached.
            c = self.client.complete(
                w.messages,
                validate=parse_entities,
                schema=self.response_schema,
                cache_only=cache_only,
            )
            piece = text[w.start : w.end]
            entities = c.parsed if c.parsed is not None else parse_entities(c.text)
            aligned = align_entities(piece, entities, self.schema.labels)
            window_spans, reply, src = self._score(c, aligned.spans, demos)
            spans.extend(
                Span(s.start + w.start, s.end + w.start, s.label, s.text, s.score)
                for s in window_spans
            )
            replies.append(reply)
            source = src if source == "logprobs" else source
            dropped_nf += len(aligned.not_found)
            dropped_bl += len(aligned.bad_label)
            cached &= c.cached
            cost += c.cost(prices) or 0.0
            new_cost += 0.0 if c.cached else (c.cost(prices) or 0.0)
        spans.sort(key=lambda sp: (sp.start, sp.end, sp.label))
        reply = min(replies) if replies else _similarity_confidence(demos)
        return PreAnnotation(
            spans,
            float(task_score(spans, reply)),
            self.name,
            source,
            dropped_not_found=dropped_nf,
            dropped_bad_label=dropped_bl,
            cached=cached,
            reply_score=float(reply),
            windows=len(plan.windows),
            version=self.version(plan, demos),
            cost_usd=cost if prices else None,
            new_cost_usd=new_cost if prices else None,
        )

    @staticmethod
    def _score(
        c: Completion, spans: list[Span], demos: list[Demo]
    ) -> tuple[list[Span], float, str]:
        if c.logprobs:
            reply = math.exp(sum(lp for _, lp in c.logprobs) / len(c.logprobs))
            return _span_logprob_scores(c.text, c.logprobs, spans, reply), reply, "logprobs"
        sim = _similarity_confidence(demos)
        return [replace(s, score=round(sim, 6)) for s in spans], sim, "similarity"


def _span_logprob_scores(
    reply: str, logprobs: list[tuple[str, float]], spans: list[Span], fallback: float
) -> list[Span]:
    """Each span's exp(mean logprob) over the reply tokens that spell its text (first unused place);
    ``fallback`` (the reply's score) where the tokens cannot be matched."""
    tokens = [t for t, _ in logprobs]
    starts, pos = [], 0
    for token in tokens:
        starts.append(pos)
        pos += len(token)
    if pos != len(reply) or "".join(tokens) != reply:
        return [
            replace(s, score=round(fallback, 6)) for s in spans
        ]  # tokens do not spell the reply (some servers)
    out, cursor = [], 0
    for s in spans:
        needle = json.dumps(s.text, ensure_ascii=False)[1:-1]
        at = reply.find(needle, cursor)
        if at < 0:
            at = reply.find(needle)
        if at < 0 or not needle:
            out.append(replace(s, score=round(fallback, 6)))
            continue
        cursor = at + len(needle)
        # Tokens overlapping [at, at + len(needle)): from the one holding ``at`` on.
        first, last = (
            bisect.bisect_right(starts, at) - 1,
            bisect.bisect_left(starts, at + len(needle)),
        )
        lps = [lp for _, lp in logprobs[first:last]]
        out.append(replace(s, score=round(math.exp(sum(lps) / len(lps)), 6)))
    return out


# --- bulk runs -----------------------------------------------------------------------------------------
@dataclass
class PrelabelResult:
    index: int
    annotation: PreAnnotation | None
    error: str | None = None
    held: str | None = (
        None  # why it was not attempted (cost cap, batch still running): not a failure
    )
    blocking: bool = False  # the endpoint refuses everyone (key, model, URL): retrying cannot help

    @property
    def status(self) -> str:
        return "done" if self.annotation is not None else "held" if self.held else "failed"


STOPPED = "stopped: the process is shutting down; the next run does it"


class PrelabelResults(list):
    """``prelabel``'s results in query order, plus what the run counted against its cost cap."""

    cost_usd: float = 0.0  # settled cost counted against the cap (spent_usd + answers used)
    stopped_at: int | None = None  # the first task held by the cost cap
    batch: object | None = None  # the BatchOutcome of a Batch API run

    @property
    def held(self) -> list[PrelabelResult]:
        return [r for r in self if r.held]


def unlabeled(texts: Sequence[str], gold: dict[int, list[dict]]) -> list[int]:
    """Indices of the tasks without gold spans: the default queries."""
    return [i for i in range(len(texts)) if i not in gold]


def build_demos(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    sim: Similarity,
    queries: Sequence[int],
    k: int,
) -> list[list[Demo]]:
    """The k most similar annotated tasks for each query, as prompt examples."""
    found = retrieve(sim, queries, sorted(gold), k)
    examples: dict[
        int, Example
    ] = {}  # one Example per demonstration, shared by every prompt showing it

    def example(i: int) -> Example:
        if i not in examples:
            examples[i] = example_from_spans(texts[i], gold[i])
        return examples[i]

    return [[Demo(example(d.index), d.similarity, d.index) for d in row] for row in found]


@dataclass
class RunPlan:
    """What a bulk run will send: each query's demonstrations and (for the LLM) its prompts.

    Made once by ``plan_run`` and shared by ``estimate_run`` and ``prelabel`` (no LLM call)."""

    queries: list[int]
    demos: list[list[Demo]]
    plans: list[TaskPlan | None]


def plan_run(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    queries: Sequence[int] | None = None,
    k: int = 3,
) -> RunPlan:
    if not gold:
        raise ValueError(
            "no annotated tasks to learn from: annotate some tasks first (or lower the budget)"
        )
    queries = unlabeled(texts, gold) if queries is None else list(queries)
    demos = build_demos(texts, gold, sim, queries, k)
    if isinstance(annotator, LLMAnnotator):
        return RunPlan(
            queries, demos, [annotator.plan(texts[i], d) for i, d in zip(queries, demos)]
        )
    return RunPlan(queries, demos, [None] * len(queries))


def _worst_case(annotator: LLMAnnotator, plan: TaskPlan, batch: bool) -> float:
    """US$ a task can cost at most: its prompts as counted, plus max_tokens of reply each; a
    cached window counts at what it cost when bought."""
    client = annotator.client
    prices = client.config.prices()
    total = 0.0
    for w in plan.windows:
        hit = client.cache.get(client.cache_key(w.messages)) if client.cache is not None else None
        if hit is not None:
            total += hit.cost(prices)
        else:
            c = token_cost(w.prompt_tokens, client.config.max_tokens, prices)
            total += c * (client.config.batch_price_factor if batch else 1.0)
    return total


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
    max_cost_usd: float | None = None,
    spent_usd: float = 0.0,
    min_span_score: float | None = None,
    run_key: str | None = None,
    batch_wait: float | None = None,
    run: RunPlan | None = None,
    stop: threading.Event | None = None,
) -> PrelabelResults:
    """Pre-annotate ``queries`` (default: every task without gold spans) from the annotated ones.

    ``gold`` maps task index -> spans ({start, end, label}). One task's failure is recorded in
    its result and never stops the others. ``on_done`` is called for each task done or failed
    (never for held ones, which are only in the returned list).

    ``max_cost_usd``: stop cleanly at this cap (``alllabel.prelabel.spend``); ``spent_usd`` already counts
    toward it. ``min_span_score``: drop weaker spans (``apply_min_span_score``). With
    ``ALLABEL_LLM_BATCH`` the LLM's answers come through the Batch API (``alllabel.llm.batch``),
    bookkept under ``run_key``; ``batch_wait`` seconds of polling at most (None: until done), the
    tasks whose batch is still running come back held. ``run``: the ``plan_run`` of these same
    arguments, if the caller made one already (for ``estimate_run``); ``queries``/``k`` then unused.
    ``stop``: once set, tasks not started yet come back held (``STOPPED``): a process shutting down
    does not wait for the rest of a long run.
    """
    run = run or plan_run(texts, gold, annotator, sim, queries=queries, k=k)
    queries, demos, plans = run.queries, run.demos, run.plans
    llm = isinstance(annotator, LLMAnnotator)
    batch = llm and annotator.client.config.batch
    if max_cost_usd is not None and (not llm or annotator.client.config.prices() is None):
        if llm:
            raise ValueError(
                f"a cost cap needs prices for {annotator.client.config.model}: set ALLABEL_PRICE_INPUT and ALLABEL_PRICE_OUTPUT"
            )
        max_cost_usd = None  # the offline annotator costs nothing
    guard = SpendGuard(max_cost_usd, spent_usd)
    results = PrelabelResults([None] * len(queries))

    def finish(j: int, result: PrelabelResult) -> PrelabelResult:
        if result.annotation is not None and min_span_score is not None:
            result.annotation = apply_min_span_score(result.annotation, min_span_score)
        results[j] = result
        if on_done is not None and not result.held:
            on_done(result)
        return result

    def attempt(j: int, cache_only: bool = False) -> PrelabelResult:
        i = queries[j]
        try:
            if llm:
                a = annotator.annotate(texts[i], demos[j], plans[j], cache_only=cache_only)
            else:
                a = annotator.annotate(texts[i], demos[j])
            guard.settle(j, a.cost_usd)
            return PrelabelResult(i, a)
        except (LLMError, ReplyError) as e:
            guard.settle(j, None)
            log.warning("task %d: pre-annotation failed: %s", i, e)
            blocking = isinstance(e, LLMError) and e.status in (401, 403, 404)
            return PrelabelResult(i, None, f"{type(e).__name__}: {e}", blocking=blocking)

    def held(j: int, why: str) -> PrelabelResult:
        return PrelabelResult(queries[j], None, held=why)

    if batch:
        admitted = [
            j
            for j in range(len(queries))
            if guard.admit(j, j, _worst_case(annotator, plans[j], True))
        ]
        prompts = {
            annotator.client.cache_key(w.messages): w.messages
            for j in admitted
            for w in plans[j].windows
        }
        from alllabel.llm.batch import BatchRunner

        key = run_key or "run-" + hashlib.sha256("".join(sorted(prompts)).encode()).hexdigest()[:16]
        outcome = BatchRunner(annotator.client).run(
            prompts,
            run_key=key,
            schema=annotator.response_schema,
            validate=parse_entities,
            wait=batch_wait,
        )
        results.batch = outcome
        admitted_set = set(admitted)
        for j in range(len(queries)):
            if j not in admitted_set:
                finish(j, held(j, guard.reason()))
                continue
            keys = [annotator.client.cache_key(w.messages) for w in plans[j].windows]
            pending = sorted({outcome.pending[k] for k in keys if k in outcome.pending})
            failed = [outcome.failed[k] for k in keys if k in outcome.failed]
            if pending:
                guard.settle(j, None)
                finish(
                    j,
                    held(
                        j, f"held: waiting for batch {', '.join(pending)}; run again to collect it"
                    ),
                )
            elif failed:
                guard.settle(j, None)
                finish(j, PrelabelResult(queries[j], None, f"LLMError: {failed[0]}"))
            else:
                finish(j, attempt(j, cache_only=True))
    else:

        def one(j: int) -> PrelabelResult:
            if stop is not None and stop.is_set():
                return finish(j, held(j, STOPPED))
            if guard.max_usd is not None:  # admission in task order (no cap: nothing to wait for)
                worst = math.inf
                try:
                    worst = _worst_case(annotator, plans[j], False)
                finally:  # every task takes its admission turn, or later ones would wait forever
                    admitted = guard.admit(j, j, worst)
                if not admitted:
                    return finish(j, held(j, guard.reason()))
            return finish(j, attempt(j))

        raw = run_bounded(one, range(len(queries)), concurrency)
        for j, r in enumerate(raw):
            if not isinstance(
                r, PrelabelResult
            ):  # an unexpected error: recorded, never raised mid-run
                finish(j, PrelabelResult(queries[j], None, f"{type(r).__name__}: {r}"))
    results.cost_usd = guard.committed
    results.stopped_at = None if guard.stopped_at is None else queries[guard.stopped_at]
    return results


# --- estimates and versions ----------------------------------------------------------------------------
@dataclass
class RunEstimate:
    """What a bulk run will send and cost, from the prompts it would build (nothing is called)."""

    model: str
    tasks: int
    windows: int  # prompts (calls) in all
    long_tasks: int  # tasks cut into more than one window
    cached: int  # prompts already answered in the cache (free)
    prompt_tokens: int  # of the prompts still to send, counted with the model's tokenizer margin
    completion_tokens: (
        int  # expected replies (demonstrations' answer/text ratio), capped at max_tokens
    )
    largest_prompt_tokens: int
    max_prompt_tokens: int
    cost_usd: float | None  # online
    batch_cost_usd: float | None  # through the Batch API
    worst_case_usd: float | None  # every reply at max_tokens
    token_counting: str
    trimmed_demos: int = 0  # demonstrations shown as excerpts (summed over prompts)
    skipped_demos: int = 0  # demonstrations left out for lack of room (summed over prompts)
    per_task: dict[int, dict] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "per_task"}
        for k in ("cost_usd", "batch_cost_usd", "worst_case_usd"):
            d[k] = None if d[k] is None else round(d[k], 4)
        return d

    def summary(self) -> str:
        cost = (
            "unknown (set ALLABEL_PRICE_INPUT/OUTPUT)"
            if self.cost_usd is None
            else f"US${self.cost_usd:.2f} (Batch API US${self.batch_cost_usd:.2f}, at most US${self.worst_case_usd:.2f})"
        )
        return (
            f"estimate: {self.tasks} task(s), {self.windows} prompt(s) ({self.long_tasks} long task(s) in windows, {self.cached} cached), "
            f"{self.prompt_tokens:,} prompt + ~{self.completion_tokens:,} reply tokens for {self.model} ({self.token_counting}); "
            f"largest prompt {self.largest_prompt_tokens:,} of {self.max_prompt_tokens:,}; cost {cost}"
        )


def estimate_run(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator: LLMAnnotator,
    sim: Similarity,
    *,
    k: int = 3,
    queries: Sequence[int] | None = None,
    run: RunPlan | None = None,
) -> RunEstimate:
    """Token and cost estimate of ``prelabel`` with the same arguments, without calling the LLM."""
    run = run or plan_run(texts, gold, annotator, sim, queries=queries, k=k)
    client, counter = annotator.client, annotator.counter
    cfg = client.config
    # Expected reply tokens per input token: the demonstrations' answers against their texts.
    shown = [example_from_spans(texts[i], s) for i, s in gold.items()]
    text_tokens = sum(counter.count(e.text) for e in shown)
    ratio = sum(counter.count(answer(e)) for e in shown) / max(1, text_tokens)
    est = RunEstimate(
        cfg.model,
        len(run.queries),
        0,
        0,
        0,
        0,
        0,
        0,
        annotator.max_prompt_tokens,
        None,
        None,
        None,
        counter.method,
    )
    prices = cfg.prices()
    worst_tokens = 0
    for i, d, plan in zip(run.queries, run.demos, run.plans):
        task = {
            "windows": len(plan.windows),
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached": 0,
        }
        est.windows += len(plan.windows)
        est.long_tasks += len(plan.windows) > 1
        for w in plan.windows:
            est.largest_prompt_tokens = max(est.largest_prompt_tokens, w.prompt_tokens)
            est.trimmed_demos += len(w.trimmed)
            est.skipped_demos += len(d) - len(w.demos)
            if (
                client.cache is not None
                and client.cache.get(client.cache_key(w.messages)) is not None
            ):
                est.cached += 1
                task["cached"] += 1
                continue
            reply = min(
                cfg.max_tokens, math.ceil(ratio * counter.count(texts[i][w.start : w.end])) + 8
            )
            task["prompt_tokens"] += w.prompt_tokens
            task["completion_tokens"] += reply
            worst_tokens += cfg.max_tokens
        est.prompt_tokens += task["prompt_tokens"]
        est.completion_tokens += task["completion_tokens"]
        task["cost_usd"] = token_cost(task["prompt_tokens"], task["completion_tokens"], prices)
        est.per_task[i] = task
    if prices is not None:
        est.cost_usd = token_cost(est.prompt_tokens, est.completion_tokens, prices)
        est.batch_cost_usd = est.cost_usd * cfg.batch_price_factor
        est.worst_case_usd = token_cost(est.prompt_tokens, worst_tokens, prices)
    return est


def current_versions(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    queries: Sequence[int],
    k: int = 3,
) -> dict[int, dict]:
    """The version each query's pre-annotation would carry if made now (no LLM call)."""
    queries = list(queries)
    demos = build_demos(texts, gold, sim, queries, k)
    if isinstance(annotator, LLMAnnotator):
        return {
            i: annotator.version(annotator.plan(texts[i], d), d) for i, d in zip(queries, demos)
        }
    return {i: annotator.version(d) for i, d in zip(queries, demos)}


def stale_reasons(stored: dict | None, current: dict) -> list[str]:
    """Why a stored pre-annotation's version differs from ``current`` (empty: up to date)."""
    if not stored:
        return ["no version recorded"]
    reasons = []
    if stored.get("annotator") != current.get("annotator") or stored.get("model") != current.get(
        "model"
    ):
        reasons.append(f"model {stored.get('model')} -> {current.get('model')}")
    if stored.get("prompt") != current.get("prompt"):
        reasons.append("prompt or its settings changed")
    if stored.get("demos") != current.get("demos"):
        reasons.append(f"demonstrations {stored.get('demos')} -> {current.get('demos')}")
    return reasons
