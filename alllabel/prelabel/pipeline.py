"""The pre-annotation pipeline, one sequence for the command line and the backend.

``run_pipeline`` goes through named steps, each reported through ``on_step(name, value)``:

1. ``carry_over``: near-duplicates of human-annotated tasks get that annotation projected onto
   their own text (``carry_over.py``): no call, annotator ``near-duplicate-projection``;
2. ``prepare``: retrieve each remaining task's k demonstrations and build its prompts (a
   ``Worklist``, ``run.py``); no call;
3. ``estimate``: tasks, prompts, tokens, US$ online and through the Batch API (priced annotators);
4. ``quality``: leave-one-out on the human-annotated tasks (``quality.py``), always answered
   online since it gates the run, within the same cost cap;
5. ``holds``: an F1 below ``min_f1`` holds the run; so does a manual start not approved yet;
6. ``run``: retrieve -> prompt -> execute -> parse -> align -> score (``run.py``), never beyond
   the cost cap; held tasks (cost cap, Batch API still running) come back with a ``Hold``.

Spend: with a ``Ledger`` (the backend's, per project), everything the endpoint bills is charged to
it at the time of the call - failed, truncated and unparseable replies, retries, quality checks,
windows - and answers from the cache are free. Without one (the command line), the run counts
the answers it uses at the price they were bought, the quality check's included.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from alllabel.prelabel.annotators import Priced
from alllabel.prelabel.carry_over import project_duplicates
from alllabel.prelabel.estimate import RunEstimate, estimate_run
from alllabel.prelabel.holds import Hold
from alllabel.prelabel.quality import QualityReport, leave_one_out, quality_hold
from alllabel.prelabel.run import PrelabelResult, PrelabelResults, Worklist, prelabel, prepare_run
from alllabel.selection.duplicates import find_duplicates
from alllabel.selection.similarity import Similarity

log = logging.getLogger(__name__)


class Ledger(Protocol):
    """Spend kept by the caller across runs and restarts."""

    def spent(self) -> float: ...

    def charge(self, usd: float) -> None: ...


@dataclass
class PipelineSettings:
    k: int = 3
    concurrency: int | None = None  # default: the annotator's (1 for a direct one)
    max_cost_usd: float | None = None
    min_span_score: float | None = None
    quality_check: bool = True
    min_f1: float | None = None
    duplicate_threshold: float | None = None  # None: no near-duplicate carry-over
    manual_start: bool = False  # hold before the run...
    # ...until approved: a bool, or a callable asked at the holds step (after the estimate is
    # known, so the backend can judge the approval against that estimate).
    approved: bool | Callable[[], bool] = False
    run_key: str | None = None  # the Batch API's bookkeeping key
    batch_wait: float | None = None


@dataclass
class PipelineOutcome:
    carried: dict[int, tuple[PrelabelResult, int]] = field(default_factory=dict)  # -> source
    work: Worklist | None = None
    estimate: RunEstimate | None = None
    quality: QualityReport | None = None
    hold: Hold | None = None
    results: PrelabelResults | None = None


def carry_over(
    texts: Sequence[str], gold: dict[int, list[dict]], queries: list[int], threshold: float
) -> dict[int, tuple[PrelabelResult, int]]:
    """Step 1: query -> (its projected result, the annotated task it came from)."""
    if not queries or not gold:
        return {}
    dups = find_duplicates(texts, threshold=threshold, priority=sorted(gold))
    projected = project_duplicates(texts, gold, dups, queries)
    return {i: (r, dups.best_source(i, gold)[0]) for i, r in projected.items()}


def check_quality(
    texts, gold, annotator, sim, s: PipelineSettings, ledger: Ledger | None, labels
) -> QualityReport:
    """Step 4: leave-one-out, online, within the cap (charged to the ledger as it goes)."""
    q = leave_one_out(
        texts,
        gold,
        labels,
        annotator,
        sim,
        k=s.k,
        concurrency=_concurrency(annotator, s),
        max_cost_usd=s.max_cost_usd,
        spent_usd=ledger.spent() if ledger else 0.0,
        min_span_score=s.min_span_score,
        on_billed=ledger.charge if ledger else None,
        ledger=ledger is not None,
    )
    log.info("quality check:\n%s", q.table())
    return q


def holds_before_run(
    q: QualityReport | None, est: RunEstimate | None, s: PipelineSettings, key: object
) -> Hold | None:
    """Step 5: a quality below the minimum, a cap reached by the check, a manual start."""
    if q is not None:
        hold = quality_hold(q, s.min_f1, key)
        if hold is None and q.hold is not None:
            hold = Hold(
                "cost_cap",
                f"the cost cap was reached during the quality check: {q.hold.message}",
                tasks=q.held,
                cap_usd=q.hold.cap_usd,
                counted_usd=q.hold.counted_usd,
                cause=q.hold.cause,
                key=s.max_cost_usd,
            )
        if hold is not None:
            return hold
    if s.manual_start and not (s.approved() if callable(s.approved) else s.approved):
        cost = f" ({est.tasks} tasks, ~US${est.cost_usd:.2f})" if est and est.cost_usd else ""
        return Hold(
            "manual",
            f"waiting for Start Training to pre-annotate{cost} (ALLABEL_PRELABEL_START=manual)",
        )
    return None


def run_pipeline(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    queries: Sequence[int],
    settings: PipelineSettings,
    *,
    labels: Sequence[str],
    ledger: Ledger | None = None,
    quality_key: object = None,
    skip_quality: bool = False,
    on_step: Callable[[str, object], None] = lambda name, value: None,
    on_done: Callable[[PrelabelResult], None] | None = None,
    stop: threading.Event | None = None,
) -> PipelineOutcome:
    """The steps of the module doc. ``skip_quality``: the check already ran on this set of
    human annotations (``quality_key`` names the set, for the hold)."""
    s, out = settings, PipelineOutcome()
    queries = [i for i in queries if i not in gold]
    if s.duplicate_threshold is not None:
        out.carried = carry_over(texts, gold, queries, s.duplicate_threshold)
        on_step("carry_over", out.carried)
        queries = [i for i in queries if i not in out.carried]
    if not queries:
        return out
    out.work = prepare_run(texts, gold, annotator, sim, queries=queries, k=s.k)
    if isinstance(annotator, Priced):
        out.estimate = estimate_run(texts, gold, annotator, sim, run=out.work)
        on_step("estimate", out.estimate)
    if s.quality_check and len(gold) >= 2 and not skip_quality:
        out.quality = check_quality(texts, gold, annotator, sim, s, ledger, labels)
        on_step("quality", out.quality)
    out.hold = holds_before_run(out.quality, out.estimate, s, quality_key)
    if out.hold is not None:
        on_step("hold", out.hold)
        return out
    out.results = execute(texts, gold, annotator, sim, out, s, ledger, on_done, stop)
    out.hold = out.results.hold()
    return out


def execute(texts, gold, annotator, sim, out, s, ledger, on_done, stop) -> PrelabelResults:
    """Step 6: the run, after what the quality check counted against the cap."""
    spent = ledger.spent() if ledger else (out.quality.cost_usd if out.quality else 0.0)
    return prelabel(
        texts,
        gold,
        annotator,
        sim,
        run=out.work,
        concurrency=_concurrency(annotator, s),
        on_done=on_done,
        max_cost_usd=s.max_cost_usd,
        spent_usd=spent,
        min_span_score=s.min_span_score,
        run_key=s.run_key,
        batch_wait=s.batch_wait,
        stop=stop,
        on_billed=ledger.charge if ledger else None,
        ledger=ledger is not None,
    )


def _concurrency(annotator, s: PipelineSettings) -> int:
    return s.concurrency or getattr(annotator, "concurrency", 1)
