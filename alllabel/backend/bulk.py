"""A project's bulk pre-annotation once its budget is reached: a thin adapter on the pipeline.

``run`` loads nothing itself: it takes the project's ``Corpus`` (from the state), runs
``alllabel.prelabel.pipeline`` (near-duplicate carry-over -> prepare -> estimate -> quality check
-> holds -> run), maps each result to Label Studio's format (the spans of every <Labels> group and
the values of every <Choices> group, each region with its own from_name) and saves it (the controller streams
them to Label Studio). Every bill the endpoint sends is added to the project's spend in the state
at the time of the call (``State.add_spent``), so ``ALLABEL_MAX_COST_USD`` holds across runs and
restarts; answers from the cache are free.

Each pre-annotation records its version: annotator, model, a hash of the prompt template and its
settings, and the task ids of its demonstrations. ``stale`` tells which ones a re-run would change
(Start Training and ``alllabel prelabel --project`` redo those, in place).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from alllabel.backend import ls_format
from alllabel.backend.label_config import NERConfig
from alllabel.backend.state import Prediction, State
from alllabel.prelabel import holds
from alllabel.prelabel.annotation import stale_reasons
from alllabel.prelabel.holds import Hold
from alllabel.prelabel.pipeline import PipelineSettings, run_pipeline
from alllabel.prelabel.prompt import annotated
from alllabel.prelabel.run import PrelabelResult, current_versions

__all__ = ["Corpus", "Hold", "RunOutcome", "gold_key", "run", "stale"]

log = logging.getLogger("alllabel")


@dataclass
class Corpus:
    """A project's usable tasks as the library sees them: index i is task ``ids[i]``."""

    cfg: NERConfig
    ids: list[int]
    texts: list[str]
    # index -> human spans (each annotated task's latest answer); with <Choices> groups, an
    # ``Annotated`` that also holds their values
    gold: dict[int, list[dict]]
    gold_key: str = ""  # see ``gold_key``

    @classmethod
    def load(cls, state: State, pid: int, cfg: NERConfig) -> "Corpus":
        tasks = state.usable_tasks(pid)
        ids = [t for t, _ in tasks]
        index = {t: i for i, t in enumerate(ids)}
        human = {t: r for t, r in state.human_results(pid).items() if t in index}
        gold = {index[t]: _gold(r, cfg) for t, r in human.items()}
        if not cfg.labels:  # only <Choices>: an annotation that chose nothing shows nothing
            gold = {
                i: g for i, g in gold.items() if any(g.chosen(c.from_name) for c in cfg.choices)
            }
        return cls(cfg, ids, [text for _, text in tasks], gold, _key(human))

    def index(self, task_ids: Iterable[int]) -> list[int]:
        pos = {t: i for i, t in enumerate(self.ids)}
        return [pos[t] for t in task_ids if t in pos]

    def version(self, a_version: dict) -> dict:
        """A pre-annotation's version with its demonstrations as task ids (indices change with the corpus)."""
        return {**a_version, "demos": [self.ids[i] for i in a_version.get("demos", [])]}


def _gold(result: list, cfg: NERConfig) -> list[dict]:
    spans = ls_format.result_spans(result, cfg) if cfg.labels else []
    if not cfg.choices:
        return spans
    chosen = {c.from_name: ls_format.result_choices(result, c) or [] for c in cfg.choices}
    return annotated(spans, chosen, cfg.schema())


def gold_key(state: State, pid: int) -> str:
    """Changes whenever a human annotation of a usable task is added, changed or removed (no texts read)."""
    usable = set(state.usable_task_ids(pid))
    return _key({t: r for t, r in state.human_results(pid).items() if t in usable})


def _key(human: dict[int, list]) -> str:
    return hashlib.sha1(json.dumps(sorted(human.items()), sort_keys=True).encode()).hexdigest()[:16]


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


class StateLedger:
    """A project's spend in the state: every bill is added at the time of the call."""

    def __init__(self, state: State, pid: int):
        self.state, self.pid = state, pid

    def spent(self) -> float:
        return self.state.project(self.pid)["spent_usd"]

    def charge(self, usd: float) -> None:
        self.state.add_spent(self.pid, usd)


def pipeline_settings(settings, annotator, approved, concurrency: int | None):
    """The backend's settings as the pipeline's (a batch run never blocks the controller)."""
    return PipelineSettings(
        k=settings.k,
        concurrency=concurrency,
        max_cost_usd=settings.max_cost_usd,
        min_span_score=settings.min_span_score,
        quality_check=settings.quality_check,
        min_f1=settings.min_f1,
        duplicate_threshold=settings.duplicate_threshold if settings.project_duplicates else None,
        manual_start=settings.prelabel_start == "manual",
        approved=approved,
        batch_wait=0 if getattr(annotator, "batch", False) else None,
    )


class _Saver:
    """Maps the pipeline's results to Label Studio's format and saves them in the state."""

    def __init__(self, state: State, pid: int, corpus: Corpus, annotator, report, saved):
        self.state, self.pid, self.corpus, self.annotator = state, pid, corpus, annotator
        self.report, self.saved, self.out = report, saved, RunOutcome()

    def save(self, r: PrelabelResult, version: dict | None = None) -> None:
        out, tid = self.out, self.corpus.ids[r.index]
        if r.annotation is None:
            self.state.save_prelabel(self.pid, tid, None, None, self.annotator.name, None, r.error)
            out.failed += 1
            out.blocker = r.error if r.blocking and not out.done else out.blocker
        else:
            a, cfg = r.annotation, self.corpus.cfg
            result = [ls_format.span_result(cfg, sp) for sp in a.spans]
            result += [
                ls_format.choices_result(
                    c, a.choices[c.from_name], a.choice_scores.get(c.from_name)
                )
                for c in cfg.choices
                if a.choices.get(c.from_name)
            ]
            version = version or self.corpus.version(a.version or {})
            score = round(a.score, 6)
            self.state.save_prelabel(self.pid, tid, result, score, a.annotator, version, None)
            out.done, out.blocker = out.done + 1, None
        self.report("progress", {"done": out.done, "failed": out.failed})
        self.saved()

    def step(self, name: str, value) -> None:
        out = self.out
        if name == "carry_over":  # saved as soon as known: no call needed
            for r, src in value.values():
                self.save(r, {"annotator": PROJECTED, "source": self.corpus.ids[src]})
            out.projected = len(value)
            if value:
                log.info("project %d: %d near-duplicate(s) projected", self.pid, len(value))
        elif name == "estimate":
            out.estimate = value.as_dict()
            self.report("estimate", out.estimate)
            log.info("project %d: %s", self.pid, value.summary())
        elif name == "quality":
            out.quality = {**value.as_dict(), "gold_key": self.corpus.gold_key}
            self.report("quality", out.quality)


def run(
    state: State,
    pid: int,
    corpus: Corpus,
    annotator,
    sim,
    order: list[int],
    *,
    settings,
    approved: bool | Callable[[], bool],
    quality_done: str | None,
    report: Callable[[str, object], None],
    saved: Callable[[], None],
    stop=None,
    concurrency: int | None = None,
) -> RunOutcome:
    """Pre-annotate the tasks in ``order`` (task ids) through the pipeline; save each result.

    ``quality_done``: the gold key the quality check last ran on (skip it if unchanged);
    ``report(name, value)`` publishes progress for /status; ``saved()`` is called after every
    saved result (the controller pushes in batches). ``concurrency``: default the annotator's."""
    s = pipeline_settings(settings, annotator, approved, concurrency)
    s.run_key = f"project-{pid}"
    saver = _Saver(state, pid, corpus, annotator, report, saved)
    result = run_pipeline(
        corpus.texts,
        corpus.gold,
        annotator,
        sim,
        corpus.index(order),
        s,
        labels=list(corpus.cfg.labels),
        ledger=StateLedger(state, pid),
        quality_key=corpus.gold_key,
        skip_quality=quality_done == corpus.gold_key,
        on_step=saver.step,
        on_done=saver.save,
        stop=stop,
    )
    out = saver.out
    out.hold = result.hold
    if out.hold is not None and out.hold.kind == "cost_cap":
        out.hold = _cap_hold(state, pid, out.hold, order, settings.max_cost_usd)
    return out


def _cap_hold(state: State, pid: int, hold: Hold, order: list[int], cap: float) -> Hold:
    """The cap's hold, lifted by another cap; when this run saw no failure, an earlier run's
    failed calls may have used the cap up (their error, quoted, names the cause)."""
    if hold.cause is None:
        preds = state.predictions(pid)
        errors = [preds[t].error for t in order if t in preds and preds[t].error]
        if errors:
            cause = f"{len(errors)} task(s) failed in earlier calls ({errors[0]})"
            hold = holds.with_cause(hold, cause)  # keeps what the hold says before (quality check)
    return dataclasses.replace(hold, key=cap)
