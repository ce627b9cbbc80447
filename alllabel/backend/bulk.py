"""A project's bulk pre-annotation once its budget is reached: what is left, what may start, the run.

In order, each step reported in ``/status`` and the log:

1. *near-duplicates* of human-annotated tasks get that annotation projected onto their own text
   (``projection.py``): no LLM call, annotator ``near-duplicate-projection``;
2. the rest is *planned* (demonstrations, prompts within ``ALLABEL_MAX_PROMPT_TOKENS``, long tasks
   in windows) and *estimated*: tasks, prompts, tokens, US$ - nothing is called;
3. the *quality check*: the same annotator leave-one-out on the human-annotated tasks (each with k
   demonstrations from the others, the paper's in-domain protocol), per-label P/R/F1 and the
   paper's F1; it runs once per set of human annotations (answers are cached);
4. *holds*: ``ALLABEL_MIN_F1`` above the check's F1 holds the run (more annotations lift it);
   ``ALLABEL_PRELABEL_START=manual`` holds it until Start Training;
5. the *run*: results are saved one by one (the controller streams them to Label Studio), never
   beyond ``ALLABEL_MAX_COST_USD`` in all (quality check included). Held tasks - cost cap, or a
   Batch API batch still running - are picked up later.

Each pre-annotation records its version: annotator, model, a hash of the prompt template and its
settings, and the task ids of its demonstrations. ``stale`` tells which ones a re-run would change
(Start Training and ``alllabel prelabel --project`` redo those, in place).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from alllabel.backend import ls_format
from alllabel.backend.label_config import NERConfig
from alllabel.backend.state import Prediction, State
from alllabel.evaluation.protocol import leave_one_out, quality_gate
from alllabel.prelabel.annotators import (
    STOPPED,
    LLMAnnotator,
    PrelabelResult,
    current_versions,
    estimate_run,
    plan_run,
    prelabel,
    stale_reasons,
)
from alllabel.prelabel.carry_over import project_duplicates
from alllabel.selection.duplicates import find_duplicates

log = logging.getLogger("alllabel")


@dataclass
class Corpus:
    """A project's usable tasks as the library sees them: index i is task ``ids[i]``."""

    cfg: NERConfig
    ids: list[int]
    texts: list[str]
    gold: dict[int, list[dict]]  # index -> human spans (each annotated task's latest answer)
    gold_key: str = ""  # see ``gold_key``

    @classmethod
    def load(cls, state: State, pid: int, cfg: NERConfig) -> "Corpus":
        tasks = state.usable_tasks(pid)
        ids = [t for t, _ in tasks]
        index = {t: i for i, t in enumerate(ids)}
        human = {t: r for t, r in state.human_results(pid).items() if t in index}
        gold = {index[t]: ls_format.result_spans(r, cfg) for t, r in human.items()}
        return cls(cfg, ids, [text for _, text in tasks], gold, _key(human))

    def index(self, task_ids: Iterable[int]) -> list[int]:
        pos = {t: i for i, t in enumerate(self.ids)}
        return [pos[t] for t in task_ids if t in pos]

    def version(self, a_version: dict) -> dict:
        """A pre-annotation's version with its demonstrations as task ids (indices change with the corpus)."""
        return {**a_version, "demos": [self.ids[i] for i in a_version.get("demos", [])]}


def gold_key(state: State, pid: int) -> str:
    """Changes whenever a human annotation of a usable task is added, changed or removed (no texts read)."""
    usable = set(state.usable_task_ids(pid))
    return _key({t: r for t, r in state.human_results(pid).items() if t in usable})


def _key(human: dict[int, list]) -> str:
    return hashlib.sha1(json.dumps(sorted(human.items()), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Hold:
    """Why the run waits, and what lifts it."""

    kind: str  # manual | min_f1 | cost_cap | batch
    reason: str
    key: object = None  # the value that must change for the hold to lift


@dataclass
class RunOutcome:
    done: int = 0
    failed: int = 0
    blocker: str | None = (
        None  # every call refused for a reason retries cannot fix (e.g. a rejected key)
    )
    projected: int = 0
    hold: Hold | None = None
    estimate: dict | None = None
    quality: dict | None = None


def stale(
    corpus: Corpus,
    annotator,
    sim,
    predictions: dict[int, Prediction],
    task_ids: Iterable[int],
    k: int,
) -> dict[int, list[str]]:
    """Pre-annotations a run would now make differently: task -> reasons (model, prompt, demonstrations).

    Projected near-duplicates are not listed: a re-run projects them again anyway (it is free)."""
    done = [
        t
        for t in task_ids
        if t in predictions
        and predictions[t].result is not None
        and predictions[t].annotator != PROJECTED
    ]
    queries = corpus.index(done)
    if not queries or not corpus.gold:
        return {}
    current = current_versions(corpus.texts, corpus.gold, annotator, sim, queries=queries, k=k)
    out = {}
    for i, version in current.items():
        t = corpus.ids[i]
        reasons = stale_reasons(predictions[t].version, corpus.version(version))
        if reasons:
            out[t] = reasons
    return out


PROJECTED = "near-duplicate-projection"


def run(
    state: State,
    pid: int,
    corpus: Corpus,
    annotator,
    sim,
    order: list[int],
    *,
    settings,
    concurrency: int,
    approved: bool,
    quality_done: str | None,
    report: Callable[[str, object], None],
    saved: Callable[[], None],
    stop=None,
) -> RunOutcome:
    """Pre-annotate the tasks in ``order`` (task ids), following the module's steps.

    ``quality_done``: the gold key the quality check last ran on (skip it if unchanged);
    ``report(name, value)`` publishes progress for /status; ``saved()`` is called after every
    saved result (the controller pushes in batches)."""
    out = RunOutcome()
    cfg = corpus.cfg

    def save(r: PrelabelResult, version: dict | None = None) -> None:
        tid = corpus.ids[r.index]
        if r.annotation is None:
            state.save_prelabel(
                pid, tid, None, None, getattr(annotator, "name", "?"), None, r.error
            )
            out.failed += 1
            if r.blocking and not out.done:
                out.blocker = r.error
        else:
            a = r.annotation
            state.save_prelabel(
                pid,
                tid,
                [ls_format.span_result(cfg, sp) for sp in a.spans],
                round(a.score, 6),
                a.annotator,
                version or corpus.version(a.version or {}),
                None,
            )
            state.add_spent(pid, getattr(a, "cost_usd", 0.0) or 0.0)
            out.done += 1
            out.blocker = None
        report("progress", {"done": out.done, "failed": out.failed})
        saved()

    queries = [i for i in corpus.index(order) if i not in corpus.gold]
    # 1. Near-duplicates of annotated tasks: their annotation, projected.
    if settings.project_duplicates and queries and corpus.gold:
        dups = find_duplicates(
            corpus.texts, threshold=settings.duplicate_threshold, priority=sorted(corpus.gold)
        )
        projected = project_duplicates(corpus.texts, corpus.gold, dups, queries)
        for i, r in projected.items():
            src = dups.best_source(i, corpus.gold)
            save(r, {"annotator": PROJECTED, "source": corpus.ids[src[0]] if src else None})
        out.projected = len(projected)
        queries = [i for i in queries if i not in projected]
        if projected:
            log.info(
                "project %d: %d near-duplicate(s) of annotated tasks got the annotation projected (no LLM)",
                pid,
                len(projected),
            )
    if not queries:
        return out
    llm = isinstance(annotator, LLMAnnotator)
    # 2. Plan and estimate (no call).
    plan = plan_run(corpus.texts, corpus.gold, annotator, sim, queries=queries, k=settings.k)
    if llm:
        est = estimate_run(corpus.texts, corpus.gold, annotator, sim, run=plan)
        out.estimate = est.as_dict()
        report("estimate", out.estimate)
        log.info("project %d: %s", pid, est.summary())
    spent = state.project(pid)["spent_usd"]
    # 3. Quality check, once per set of human annotations.
    key = corpus.gold_key
    if settings.quality_check and len(corpus.gold) >= 2 and quality_done != key:
        checker = (
            annotator.online() if llm else annotator
        )  # answers now, even when the bulk uses the Batch API
        q = leave_one_out(
            corpus.texts,
            corpus.gold,
            list(cfg.labels),
            checker,
            sim,
            k=settings.k,
            concurrency=concurrency,
            max_cost_usd=settings.max_cost_usd,
            spent_usd=spent,
            min_span_score=settings.min_span_score,
        )
        state.add_spent(pid, q.cost_usd)
        spent += q.cost_usd
        out.quality = {**q.as_dict(), "gold_key": key}
        report("quality", out.quality)
        log.info(
            "project %d: quality check (leave-one-out on %d human-annotated tasks):\n%s",
            pid,
            q.tasks,
            q.table(),
        )
        why = quality_gate(q, settings.min_f1)
        if why:
            out.hold = Hold("min_f1", why, key)
            return out
    # 4. Manual start.
    if settings.prelabel_start == "manual" and not approved:
        est = (
            f" ({out.estimate['tasks']} tasks, ~US${out.estimate['cost_usd']})"
            if out.estimate and out.estimate.get("cost_usd") is not None
            else ""
        )
        out.hold = Hold(
            "manual",
            f"waiting for Start Training to pre-annotate{est} (ALLABEL_PRELABEL_START=manual)",
            None,
        )
        return out
    # 5. The run.
    results = prelabel(
        corpus.texts,
        corpus.gold,
        annotator,
        sim,
        run=plan,
        concurrency=concurrency,
        on_done=save,
        max_cost_usd=settings.max_cost_usd,
        spent_usd=spent,
        min_span_score=settings.min_span_score,
        run_key=f"project-{pid}",
        batch_wait=0 if llm and annotator.client.config.batch else None,
        stop=stop,
    )
    held = [r for r in results.held if r.held != STOPPED]
    if held:
        batch = [r for r in held if r.held and r.held.startswith("held: waiting for batch")]
        if batch:
            out.hold = Hold(
                "batch",
                f"{len(batch)} task(s) waiting for the Batch API ({batch[0].held.split(';')[0][6:]})",
                None,
            )
        else:
            out.hold = Hold(
                "cost_cap",
                f"stopped at the cost cap: {len(held)} task(s) not pre-annotated; {held[0].held} "
                "(raise ALLABEL_MAX_COST_USD and restart the backend to continue)",
                settings.max_cost_usd,
            )
    return out
