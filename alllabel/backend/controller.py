"""One controller per Label Studio project: a thread that keeps the project where it should be.

Each step reads a snapshot of the project (``snapshot``), asks ``decide.decide`` what to do, applies
the actions (``apply``: the only place that calls Label Studio or writes the state for a decision)
and reads again, until nothing is left or ``MAX_ROUNDS`` rounds have run. Webhooks, start-up and
failures only set requests in the controller's ``Memory``; ``decide`` turns them into actions.

A failed step (Label Studio down, 5xx, a rejected key) is retried with backoff; nothing waits for
a human, and one project's long run (its own thread) never delays another project.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from alllabel.backend import actions as A
from alllabel.backend import lsops, reconcile
from alllabel.backend.decide import after_run, backend_listed, decide, next_backoff, title_warning
from alllabel.backend.label_config import NERConfig, parse_label_config
from alllabel.backend.ls_client import SAMPLING, LabelStudioAPI, LabelStudioError
from alllabel.backend.picks import Picker
from alllabel.backend.runner import pre_annotate
from alllabel.backend.snapshot import read_snapshot
from alllabel.backend.state import State
from alllabel.backend.status import LAST_ERRORS

log = logging.getLogger("alllabel")

MAX_ROUNDS = 24  # snapshot -> decide -> apply rounds in one step; each stage fires once per step


@dataclass
class Services:
    """What a controller uses beyond the state: passed in, never looked up."""

    ls: Callable[[], LabelStudioAPI]
    annotator: Callable[[NERConfig], object]
    annotator_name: Callable[[], str]
    batch_poll: float = 30.0
    # Signs the project's webhook (secret header, basic auth): webhook_auth.WebhookAuth.ensure.
    sign_webhooks: Callable[[LabelStudioAPI, int, str], bool] | None = None


class ProjectController:
    def __init__(self, pid: int, state: State, settings, services: Services, start: bool = True):
        self.pid, self.state, self.settings, self.services = pid, state, settings, services
        self.planned = threading.Event()  # the queue is in Label Studio (the first /setup waits)
        self.memory = A.Memory()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.0
        self.error: str | None = None
        self.errors: list[dict] = []  # the last few errors, for /status
        self._run_thread: threading.Thread | None = None
        self.runs_finished = 0
        self.blocker: str | None = None  # a problem only the user can fix: /setup reports it
        self.report: dict = {}  # estimate, quality, progress, stale, screening: for /status
        self._quality_key: str | None = None
        self.picker = Picker(state, pid, settings, self.report)
        self._busy = False
        self.thread = threading.Thread(
            target=self._loop, name=f"alllabel-project-{pid}", daemon=True
        )
        if start:
            self.thread.start()

    # --- signals from the outside ----------------------------------------------------------------
    def prelabel_now(self) -> None:
        """The CLI's ``prelabel --project``: pre-annotate now, whatever the budget or the estimate."""
        with self._lock:
            now = time.monotonic()
            self.memory.force_run = True
            self.memory.approval = A.Approval(None, None, now, now, unlimited=True)
        self.wake(full=True, reassert=True, audit=True)  # and retry, redo what is stale

    def wake(
        self,
        *,
        probe: bool = False,
        full: bool = False,
        reassert: bool = False,
        audit: bool = False,
    ) -> None:
        with self._lock:
            m = self.memory
            m.probe_now |= probe or full or reassert
            m.full_sync |= full
            m.reassert |= reassert
            m.audit_needed |= audit
            if reassert:  # Start Training: retry now, redo what is stale; approves only what it saw
                self._retry_at = m.llm_retry_at = m.claim_retry_at = 0.0
                self._backoff = m.llm_backoff = 0.0
                m.rerun = True
                m.start_training_at = time.monotonic()
                self.blocker = None
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop and the run (tasks not started are left for the next process); wait for both."""
        self._stop.set()
        self._wake.set()
        if self.thread is not threading.current_thread() and self.thread.is_alive():
            self.thread.join(timeout)  # first the loop: its last step may still have started a run
        run = self._run_thread
        if run is not None and run is not threading.current_thread():
            run.join(timeout)

    def idle(self) -> bool:
        """Nothing left to do right now (tests, the CLI): no claims, pushes, runs or failures."""
        m = self.memory
        if self._busy or m.probe_now or m.audit_needed or self.error or self._wake.is_set():
            return False
        return not self._running() and (
            not self.state.claims(self.pid)
            and self.state.pending_summary(self.pid)[0] == 0
            and self.state.unsure_pushes(self.pid) == 0
        )

    def _running(self) -> bool:
        return self._run_thread is not None and self._run_thread.is_alive()

    # --- the loop --------------------------------------------------------------------------------
    def _sleep_time(self) -> float:
        now, m = time.monotonic(), self.memory
        due = [m.next_probe, self._retry_at]
        if self._running() or m.claim_retry_at:
            due.append(now + 0.5)
        if m.llm_retry_at:
            due.append(m.llm_retry_at)
        if m.hold and m.hold.kind == "batch":
            due.append(m.hold_since + self.services.batch_poll)
        return max(0.05, min(due) - now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._sleep_time())
            self._wake.clear()
            if self._stop.is_set():
                return
            if time.monotonic() < self._retry_at:
                continue
            self._busy = True
            try:
                self.step()
                if self.error:
                    log.info("project %d: Label Studio answers again", self.pid)
                self.error, self._backoff = None, 0.0
            except Exception as e:  # noqa: BLE001 - every failure is reported and retried
                self._failed(e)
            finally:
                self._busy = False

    def _failed(self, e: Exception) -> None:
        self._backoff = next_backoff(self._backoff, 1.0, self.settings.max_backoff)
        self._retry_at = time.monotonic() + self._backoff
        self.memory.audit_needed = True  # a push may have been cut in the middle
        if isinstance(e, LabelStudioError):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {e}"
            log.exception("project %d: step failed", self.pid)
        self.error = f"{msg} (retrying in {self._backoff:.0f}s)"
        self.errors = [*self.errors, {"at": time.time(), "error": self.error}][-LAST_ERRORS:]
        log.warning("project %d: %s", self.pid, self.error)

    # --- one step: snapshot -> decide -> apply, until nothing is left ----------------------------
    def step(self) -> list:
        """One step; returns the actions applied (for tests)."""
        applied: list = []
        for _ in range(MAX_ROUNDS):
            snap = self.snapshot(tuple(type(a).__name__ for a in applied))
            todo = decide(snap, self.settings, time.monotonic())
            if not todo or self._stop.is_set():
                break
            for action in todo:
                self.apply(action)
                applied.append(action)
        else:
            log.warning("project %d: step cut after %d rounds: %s", self.pid, MAX_ROUNDS, applied)
        if self.state.project(self.pid)["phase"] != "new":
            self.planned.set()
        return applied

    def snapshot(self, done: tuple[str, ...] = ()) -> A.Snapshot:
        """The project as the state holds it, with what Label Studio last reported."""
        with self._lock:
            memory = copy.copy(self.memory)
        return read_snapshot(
            self.state,
            self.pid,
            memory,
            run_alive=self._running(),
            batch_poll=self.services.batch_poll,
            annotator_name=self.services.annotator_name(),
            spares=self.picker.ready(),
            done=done,
        )

    # --- apply: Label Studio calls and state writes, one action at a time --------------------------
    def apply(self, action) -> None:
        getattr(self, "_do_" + type(action).__name__)(action)

    def _do_ConfirmClaims(self, a: A.ConfirmClaims) -> None:
        ls = self.services.ls()
        changed, retry = lsops.confirm_claims(self.state, ls, self.pid, a.limit, a.retries)
        with self._lock:
            self.memory.plan_now |= changed  # a confirmed annotation: refill the reserve now
            if a.retries or not self.memory.claim_retry_at:
                self.memory.claim_retry_at = time.monotonic() + 1.0 if retry else 0.0

    def _do_Probe(self, a: A.Probe) -> None:
        info = self.services.ls().project(self.pid)
        with self._lock:
            m = self.memory
            m.info, m.probe_now, m.probes = info, False, m.probes + 1
            m.full_synced = False
            m.next_probe = time.monotonic() + self.settings.sync_interval

    def _do_CheckBackends(self, a: A.CheckBackends) -> None:
        found = self.services.ls().ml_backends(self.pid)
        titles = tuple(m.get("title") or "" for m in found)
        urls = tuple((m.get("url") or "").rstrip("/") for m in found)
        m = self.memory
        m.backend_titles, m.backends_checked_at = titles, m.probes
        m.backend_listed = backend_listed(titles, urls, self.settings)

    def _do_Detach(self, a: A.Detach) -> None:
        self.memory.detached = a.reason
        self.state.update_project(self.pid, message=a.reason)
        log.warning("project %d: %s", self.pid, a.reason)

    def _do_Reattach(self, a: A.Reattach) -> None:
        self.memory.detached = None
        self.memory.full_sync = self.memory.plan_now = True
        self.state.update_project(self.pid, message=None)
        log.info("project %d: the backend is connected again", self.pid)

    def _do_ReloadConfig(self, a: A.ReloadConfig) -> None:
        parse_label_config(a.label_config)  # an unsupported new config stops here, reported
        self.state.register(self.pid, a.label_config)
        self.memory.full_sync = True

    def _do_AuthorizeWebhooks(self, a: A.AuthorizeWebhooks) -> None:
        # LS creates the backend's webhook after the first /setup: the next probe looks again.
        if self.services.sign_webhooks is not None:
            mv = self.settings.model_version
            signed = self.services.sign_webhooks(self.services.ls(), self.pid, mv)
            self.memory.webhooks_authorized = signed

    def _do_RestoreModelVersion(self, a: A.RestoreModelVersion) -> None:
        # Creating the model, Label Studio sets the project's model version to the model's title
        # when its own copy of the project had none, i.e. over ours, set during that /setup. That
        # is Label Studio's doing, not the user's: set ours back, and say why.
        mv = self.settings.model_version
        self.memory.title_warning = title_warning(a.title, mv)
        log.warning("project %d: %s", self.pid, self.memory.title_warning)
        self.services.ls().update_project(self.pid, model_version=mv)
        self.memory.info = {**(self.memory.info or {}), "model_version": mv}

    def _do_Warn(self, a: A.Warn) -> None:
        for w in a.warnings:
            log.warning("project %d: %s", self.pid, w)
        self.memory.warnings = a.warnings

    def _do_Sync(self, a: A.Sync) -> None:
        cfg = parse_label_config(self.state.project(self.pid)["label_config"])
        lsops.sync(self.state, self.services.ls(), self.pid, cfg, full=a.full)
        if a.full:
            self.memory.full_sync, self.memory.full_synced = False, True

    def _do_Audit(self, a: A.Audit) -> None:
        mv = self.settings.model_version
        found = reconcile.audit(self.state, self.services.ls(), self.pid, mv)
        self.state.update_project(self.pid, predictions_baseline=found["others"])
        self.memory.audit_needed = False

    def _do_SetMessage(self, a: A.SetMessage) -> None:
        self.state.update_project(self.pid, message=a.text)

    def _do_ExtendQueue(self, a: A.ExtendQueue) -> None:
        self.memory.plan_now = a.reserve_later  # the reserve follows once the order is in
        self.picker.extend(a.for_budget, a.for_reserve)
        self.state.update_project(self.pid, budget=a.budget)

    def _do_TopUpSpares(self, a: A.TopUpSpares) -> None:
        self.picker.top_up(a.want)

    def _do_Push(self, a: A.Push) -> None:
        st, mv = self.state, self.settings.model_version
        todo = st.pending_pushes(self.pid)
        if a.limit is not None:  # the lowest positions (scores) first: what LS serves first
            todo = dict(sorted(todo.items(), key=lambda kv: kv[1][1])[: a.limit])
        sent = reconcile.push(st, self.services.ls(), self.pid, mv, todo, self.settings.push_batch)
        if sent:
            log.info("project %d: %d prediction(s) sent to Label Studio", self.pid, sent)

    def _do_ApplySettings(self, a: A.ApplySettings) -> None:
        mv = self.settings.model_version
        lsops.apply_settings(self.state, self.services.ls(), self.pid, mv, a.show_predictions)
        m = self.memory
        m.reassert, m.warnings = False, ()
        set_now = {
            "sampling": SAMPLING,
            "model_version": mv,
            "show_collab_predictions": a.show_predictions,
        }
        m.info = {**(m.info or {}), **set_now}  # what Label Studio holds now
        m.next_probe = min(m.next_probe, time.monotonic() + 3)  # what LS's connect did

    def _do_CreateQueueTab(self, a: A.CreateQueueTab) -> None:
        lsops.create_queue_tab(self.state, self.services.ls(), self.pid)

    def _do_SetPhase(self, a: A.SetPhase) -> None:
        p = self.state.project(self.pid)
        self.state.update_project(self.pid, phase=a.phase, message=a.message)
        queued = len(self.state.queue(self.pid))
        args = (self.pid, p["phase"], a.phase, p["budget"], queued)
        log.info("project %d: %s -> %s (budget %s, %d queued)", *args)

    def _do_ShowPredictions(self, a: A.ShowPredictions) -> None:
        lsops.show_predictions(self.state, self.services.ls(), self.pid)

    def _do_ReviewTab(self, a: A.ReviewTab) -> None:
        lsops.review_tab(self.services.ls(), self.pid)

    def _do_Approve(self, a: A.Approve) -> None:
        with self._lock:
            self.memory.approval = a.approval
        log.info("project %d: Start Training approved the run: %s", self.pid, a.approval)

    def _do_LiftHold(self, a: A.LiftHold) -> None:
        self.memory.hold = None  # only the loop lifts; the run thread sets it when no run goes
        self.memory.live_accepted |= a.accept_live

    def _do_StartRun(self, a: A.StartRun) -> None:
        with self._lock:
            self.memory.rerun = False
        self._run_thread = threading.Thread(
            target=self._run,
            args=(list(a.order), a.rerun),
            name=f"alllabel-run-{self.pid}",
            daemon=True,
        )
        self._run_thread.start()

    def _run(self, order: list[int], rerun: bool) -> None:
        """The run's thread: ``runner.pre_annotate``, then what it ended with goes into memory."""
        end = None
        try:
            end = pre_annotate(
                self.state,
                self.pid,
                self.settings,
                annotator_for=self.services.annotator,
                similarity=self.picker.similarity,
                order=order,
                rerun=rerun,
                approval=self.memory.approval,
                quality_done=self._quality_key,
                report=self.report,
                saved=self._wake.set,
                stop=self._stop,
                live_accepted=self.memory.live_accepted,
            )
            failed = end.failed
        except Exception as e:  # noqa: BLE001 - reported in /status, retried with backoff
            log.exception("project %d: pre-annotation run failed", self.pid)
            msg = f"pre-annotation run failed: {type(e).__name__}: {e}"
            self.state.update_project(self.pid, message=msg)
            failed = 1
        self._ended(end, failed)

    def _ended(self, end, failed: int) -> None:
        now = time.monotonic()
        with self._lock:
            m = self.memory
            if end is not None:
                self._quality_key, self.blocker = end.quality_key, end.blocker
            vars(m).update(after_run(m, end, failed, now, self.settings.llm_max_backoff))
        if end is not None and end.hold is not None:
            log.warning("project %d: %s", self.pid, end.hold.reason)
            self.state.update_project(self.pid, message=end.hold.reason)
        if failed:
            log.warning("project %d: %d pre-annotation(s) failed", self.pid, failed)
            if self.blocker:
                log.error("project %d: pre-annotation is blocked: %s", self.pid, self.blocker)
        self.runs_finished += 1
        self._wake.set()
