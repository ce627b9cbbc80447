"""The pre-annotation run, applied (its own thread): the one place the controller calls ``bulk``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from alllabel.backend import bulk
from alllabel.backend.actions import Approval
from alllabel.backend.decide import approval_covers, approval_used
from alllabel.backend.label_config import parse_label_config
from alllabel.backend.live import live_accuracy, live_gate
from alllabel.backend.state import State
from alllabel.prelabel import holds

log = logging.getLogger("alllabel")
LIVE_CHECK_EVERY = 2.0  # seconds between reads of the live accuracy while a run goes


@dataclass
class RunEnd:
    failed: int = 0
    hold: bulk.Hold | None = None
    blocker: str | None = None
    quality_key: str | None = None
    estimate: dict | None = None  # what this run estimated (shown when it is held)
    approval: Approval | None = None  # the approval after this run used it


def gold_key(state: State, pid: int) -> str:
    """Changes whenever a human annotation changes (what lifts a hold for a quality below the minimum)."""
    return bulk.gold_key(state, pid)


class Gate:
    """``bulk.run`` reads ``approved`` after it has reported the run's estimate: the approval is
    judged against that estimate then (``decide.approval_covers``)."""

    def __init__(self, approval: Approval | None, estimate: Callable[[], dict | None]):
        self.approval, self._estimate, self.used = approval, estimate, approval

    def __call__(self) -> bool:
        est = self._estimate()
        ok = approval_covers(self.approval, est)
        if ok and self.approval is not None:
            self.used = approval_used(self.approval, est)
        return ok


class LiveCheck:
    """The run's stop signal, also set once human corrections score a version below
    ALLABEL_MIN_LIVE_F1 (``hold`` then says why): the rest of the run waits."""

    def __init__(self, state: State, pid: int, settings, stop, accepted: frozenset):
        self.state, self.pid, self.settings, self.stop = state, pid, settings, stop
        self.accepted, self.hold, self._next = accepted, None, 0.0

    def check(self) -> holds.Hold | None:
        s = self.settings
        live = live_accuracy(self.state.reviewed(self.pid))
        failing = live_gate(live, s.min_live_f1, s.min_live_tasks, self.accepted)
        if failing and self.hold is None:
            version, m = failing[0]
            keys = frozenset(k for k, _ in failing)
            self.hold = holds.live_f1(version, m["f1"], s.min_live_f1, m["tasks"], keys)
        return self.hold

    def is_set(self) -> bool:
        if self.stop.is_set():
            return True
        if self.hold is None and time.monotonic() >= self._next:
            self._next = time.monotonic() + LIVE_CHECK_EVERY
            self.check()
        return self.hold is not None


def pre_annotate(
    state: State,
    pid: int,
    settings,
    *,
    annotator_for,
    similarity,
    order: list[int],
    rerun: bool,
    approval: Approval | None,
    quality_done: str | None,
    report: dict,
    saved: Callable[[], None],
    stop: threading.Event,
    live_accepted: frozenset = frozenset(),
) -> RunEnd:
    """One bulk run over ``order`` (task ids); results are saved one by one and pushed by the loop."""
    end = RunEnd(approval=approval, quality_key=quality_done)
    live = LiveCheck(state, pid, settings, stop, live_accepted)
    if live.check():  # corrections already below the minimum: nothing starts
        end.hold = live.hold
        return end
    config = parse_label_config(state.project(pid)["label_config"])
    corpus = _span_corpus(state, pid, config)
    annotator = annotator_for(corpus.cfg)
    sim = similarity(corpus.texts)
    if rerun:
        order = _with_stale(state, pid, settings, corpus, annotator, sim, order, report)
    _started(report, pid, len(order), annotator.name, len(corpus.gold))

    def publish(name, value):
        if name == "estimate":
            end.estimate = value
        report[name] = {**report.get(name, {}), **value} if name == "progress" else value

    gate = Gate(approval, lambda: end.estimate)
    out = bulk.run(
        state,
        pid,
        corpus,
        annotator,
        sim,
        order,
        settings=settings,
        approved=gate,
        quality_done=quality_done,
        report=publish,
        saved=saved,
        stop=live,
    )
    if out.quality:
        end.quality_key = out.quality["gold_key"]
    end.hold, end.blocker, end.failed, end.approval = out.hold, out.blocker, out.failed, gate.used
    end.hold = live.hold or end.hold  # held by live accuracy rather than merely stopped
    return end


def _started(report: dict, pid: int, tasks: int, annotator: str, demos: int) -> None:
    """The run's progress starts (its rate counts from now)."""
    _start_progress(report, tasks, annotator)
    log.info(
        "project %d: pre-annotating %d task(s) with %s from %d demonstration(s)",
        pid,
        tasks,
        annotator,
        demos,
    )


def _with_stale(
    state: State, pid: int, settings, corpus, annotator, sim, order, report
) -> list[int]:
    """Start Training: the run also redoes pre-annotations made with another model, prompt or
    set of demonstrations (in place)."""
    annotated = state.annotated_tasks(pid)
    todo = [t for t in corpus.ids if t not in annotated]
    old = bulk.stale(corpus, annotator, sim, state.predictions(pid), todo, settings.k)
    report["stale"] = {"tasks": len(old), "examples": dict(list(old.items())[:3])}
    if old:
        log.info("project %d: %d pre-annotation(s) are out of date; redoing them", pid, len(old))
    return order + [t for t in old if t not in set(order)]


def _start_progress(report: dict, total: int, annotator: str) -> None:
    """The run's progress for /status and the page (its rate counts from now)."""
    report["progress"] = {
        "total": total,
        "done": 0,
        "failed": 0,
        "started": time.time(),
        "annotator": annotator,
    }


def _span_corpus(state: State, pid: int, config) -> bulk.Corpus:
    if config.ner is None:
        raise ValueError("nothing in this labeling config is pre-annotated")
    corpus = bulk.Corpus.load(state, pid, config.ner)
    if not corpus.gold:
        raise ValueError("no human-annotated tasks to use as demonstrations yet")
    return corpus
