"""One controller per Label Studio project: a thread that keeps the project where it should be.

Each step, in order (see ``ProjectController.step``):

1. *claims*: annotations that webhooks reported are read back from Label Studio; only what
   Label Studio confirms moves the budget.
2. *probe* (every ``sync_interval`` seconds, or at once after a webhook): one request for the
   project's counts and settings. Counts that differ from the state trigger a *sync* of the
   tasks changed since the last one (Label Studio's ``updated_at``); settings that differ from
   what we set are reported, never overwritten.
3. *plan*: the queue gets the ALLabel picks it needs (``planner.picks_needed``).
4. *settings*, once at connect: Uncertainty sampling on our model version, predictions hidden
   from annotators while they label the budget, the "ALLabel queue" tab.
5. *budget*: once M tasks carry confirmed human annotations, the bulk pre-annotation
   (``bulk.py``: near-duplicate projections, estimate, quality check, holds, the run) starts on
   its own thread; predictions are shown to annotators from then on.
6. *push*: what Label Studio should hold and does not is sent in batches (``push_batch``
   predictions or ``push_delay`` seconds, whichever comes first), so pre-annotations appear while
   the run goes on.

Failures (Label Studio down, 5xx, a rejected key) back off up to ``max_backoff`` seconds and the
step is simply tried again; failed pre-annotations are retried with their own backoff. Nothing
waits for a human, and one project's long run never delays another project.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from alllabel.backend import bulk, ls_format, planner, reconcile
from alllabel.backend.label_config import NERConfig, parse_label_config
from alllabel.backend.ls_client import (
    QUEUE_VIEW_TITLE,
    REVIEW_VIEW_TITLE,
    SAMPLING,
    LabelStudioAPI,
    LabelStudioError,
)
from alllabel.selection.blocks import make_runner
from alllabel.selection.screening import LengthRule, screen
from alllabel.selection.simcache import SimilarityCache
from alllabel.selection.stages import select

if TYPE_CHECKING:
    from alllabel.backend.orchestrator import Orchestrator

log = logging.getLogger("alllabel")

CLAIM_CHECKS = (
    3  # a claimed new annotation Label Studio does not know after this many reads is dropped
)
SYNC_MARGIN = timedelta(seconds=30)
CONNECT_GRACE = 120.0  # seconds after the settings are set in which Label Studio's connect may still overwrite them  # re-read tasks changed shortly before the last one seen (late commits)


class ProjectController:
    def __init__(self, orch: "Orchestrator", pid: int):
        self.orch = orch
        self.pid = pid
        self.state = orch.state
        self.settings = orch.settings
        self.planned = (
            threading.Event()
        )  # the queue is in Label Studio (the first /setup waits for it)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._queue_lock = (
            threading.RLock()
        )  # queue extensions: the controller's and the webhooks' refills
        # What the next step must do beyond the routine (set by webhooks, start-up, failures).
        self._probe_now = True
        self._plan_now = False
        self._full_sync = True
        self._audit_needed = True
        self._reassert = False
        self._next_probe = 0.0
        self._claim_retry_at = 0.0
        # Failures and backoff.
        self._retry_at = 0.0
        self._backoff = 0.0
        self.error: str | None = None
        self._llm_retry_at = 0.0
        self._llm_backoff = 0.0
        # The pre-annotation run.
        self._run_thread: threading.Thread | None = None
        self.runs_finished = 0
        self.force_run = (
            False  # pre-annotate now, whatever the budget says (CLI: prelabel --project)
        )
        self._rerun = False  # redo stale pre-annotations at the next run (Start Training, CLI)
        self.hold: bulk.Hold | None = None
        self._hold_since = 0.0
        self.blocker: str | None = (
            None  # a problem only the user can fix: /setup reports it in Label Studio
        )
        self.report: dict = {}  # estimate, quality, progress, stale, screening: for /status
        self._quality_key: str | None = None
        self._similarities = SimilarityCache(orch.settings.state_dir / "similarity", keep=1)
        self._spare: list[
            tuple[int, str]
        ] = []  # next reserve picks already selected: (task id, stage)
        self._spare_key: tuple[int, ...] | None = (
            None  # the usable tasks the spares were selected among
        )
        # What the last probe said.
        self.warnings: list[str] = []
        self.title_warning: str | None = None
        self._webhooks_authorized = False
        self._busy = False
        self.thread = threading.Thread(
            target=self._loop, name=f"alllabel-project-{pid}", daemon=True
        )
        self.thread.start()

    # --- signals from the outside ----------------------------------------------------------------
    def wake(
        self,
        *,
        probe: bool = False,
        full: bool = False,
        reassert: bool = False,
        audit: bool = False,
    ) -> None:
        with self._lock:
            self._probe_now |= probe or full or reassert
            self._full_sync |= full
            self._reassert |= reassert
            self._audit_needed |= audit
            if reassert:  # Start Training: retry now, whatever the backoff said; redo what is stale
                self._retry_at = self._llm_retry_at = self._claim_retry_at = 0.0
                self._backoff = self._llm_backoff = 0.0
                self._rerun = True
                self.blocker = None
                if self.hold and self.hold.kind in ("manual", "batch"):
                    self.hold = None
                self.state.update_project(self.pid, run_approved=1)
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop and the run (tasks not started are left for the next process) and wait for both."""
        self._stop.set()
        self._wake.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)  # first the loop: its last step may still have started a run
        run = self._run_thread
        if run is not None and run is not threading.current_thread():
            run.join(timeout)

    def idle(self) -> bool:
        """Nothing left to do right now (for tests and the CLI): no claims, pushes, runs or failures."""
        if self._busy or self._probe_now or self._audit_needed or self.error or self._wake.is_set():
            return False
        if self._run_thread is not None and self._run_thread.is_alive():
            return False
        return (
            not self.state.claims(self.pid)
            and self.state.pending_summary(self.pid)[0] == 0
            and self.state.unsure_pushes(self.pid) == 0
        )

    # --- the loop --------------------------------------------------------------------------------
    def _sleep_time(self) -> float:
        now = time.monotonic()
        running = self._run_thread is not None and self._run_thread.is_alive()
        due = [self._next_probe, self._retry_at]
        if running or self._claim_retry_at:
            due.append(now + 0.5)
        if self._llm_retry_at:
            due.append(self._llm_retry_at)
        if self.hold and self.hold.kind == "batch":
            due.append(self._hold_since + self.orch.llm_config.batch_poll)
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
                self._backoff = min(self.settings.max_backoff, max(1.0, 2 * self._backoff))
                self._retry_at = time.monotonic() + self._backoff
                self._audit_needed = True  # a push may have been cut in the middle
                if isinstance(e, LabelStudioError):
                    msg = str(e)
                else:
                    msg = f"{type(e).__name__}: {e}"
                    log.exception("project %d: step failed", self.pid)
                self.error = f"{msg} (retrying in {self._backoff:.0f}s)"
                log.warning("project %d: %s", self.pid, self.error)
            finally:
                self._busy = False

    def ls(self) -> LabelStudioAPI:
        return self.orch.ls()

    # --- one step ----------------------------------------------------------------------------------
    def step(self) -> None:
        ls = self.ls()
        project = self.state.project(self.pid)
        cfg = parse_label_config(project["label_config"])
        confirmed = self._check_claims(ls)
        with self._lock:
            probe = self._probe_now or time.monotonic() >= self._next_probe
            plan = probe or confirmed or self._plan_now
            self._probe_now = self._plan_now = False
        if probe:
            self._next_probe = time.monotonic() + self.settings.sync_interval
            self._probe_and_sync(ls, cfg)
        if (
            plan
        ):  # after a confirmed annotation this is all that runs: the reserve is refilled at once
            self._plan_and_run(ls, cfg)
        self._push(ls)

    # 1. claims -----------------------------------------------------------------------------------
    def _check_claims(self, ls: LabelStudioAPI) -> bool:
        """Confirm what webhooks claimed; True if anything about annotations changed."""
        if time.monotonic() < self._claim_retry_at:
            return False
        self._claim_retry_at = 0.0
        confirmed = False
        for aid, task, checks, status in self.state.claims(self.pid)[:200]:
            seq = self.state.tick()
            a = ls.annotation(aid)
            if a is not None and a.get("project") not in (None, self.pid):
                a = None  # an annotation of another project: not ours to count
            if a is not None:
                self.state.record_annotation(self.pid, a, seq)
                confirmed = True
            elif status != "claimed" or checks + 1 >= CLAIM_CHECKS:
                # Deleted (a known annotation is gone), or never there: a claim nobody can confirm.
                self.state.record_absent(self.pid, [aid], seq)
                if status == "claimed":
                    log.warning(
                        "project %d: webhook reported annotation %d on task %d, which Label Studio does not have: ignored",
                        self.pid,
                        aid,
                        task,
                    )
                confirmed = True
            else:
                self.state.failed_check(
                    self.pid, aid
                )  # maybe not committed yet: read again shortly
                self._claim_retry_at = time.monotonic() + 1.0
        return confirmed

    # 2. probe and sync ---------------------------------------------------------------------------
    def _probe_and_sync(self, ls: LabelStudioAPI, cfg: NERConfig) -> None:
        info = ls.project(self.pid)
        if (
            info.get("label_config")
            and info["label_config"] != self.state.project(self.pid)["label_config"]
        ):
            parse_label_config(
                info["label_config"]
            )  # an unsupported new config stops here, reported
            self.state.register(self.pid, info["label_config"])
            cfg = parse_label_config(info["label_config"])
            self._full_sync = True
        self._note_settings(ls, info)
        if self.settings.basic_auth_user and not self._webhooks_authorized:
            token = self.orch.basic_auth_header()
            # LS creates the backend's webhook after the first /setup: keep trying until it exists.
            self._webhooks_authorized = (
                ls.authorize_webhooks(self.pid, self.settings.model_version, token) > 0
            )
        if self._full_sync:
            self._sync(ls, cfg, full=True)
            self._full_sync = False
        elif self._counts_differ(info):
            self._sync(ls, cfg, full=False)
            if self._counts_differ(info):
                log.info(
                    "project %d: counts still differ after reading the changed tasks: reading them all",
                    self.pid,
                )
                self._sync(ls, cfg, full=True)
        expected = (
            self.state.project(self.pid)["predictions_baseline"] or 0
        ) + self.state.pushed_count(self.pid)
        if (
            info.get("total_predictions_number") is not None
            and info["total_predictions_number"] != expected
            and self.state.pushed_count(self.pid)
        ):
            self._audit_needed = True

    def _counts_differ(self, info: dict) -> bool:
        ours = {
            "task_number": len(self.state.task_ids(self.pid)),
            "total_annotations_number": self.state.annotation_count(self.pid)[0],
            "num_tasks_with_annotations": len(self.state.annotated_tasks(self.pid)),
        }
        return any(info.get(k) is not None and info[k] != v for k, v in ours.items())

    def _sync(self, ls: LabelStudioAPI, cfg: NERConfig, *, full: bool) -> None:
        """Read tasks (all, or those changed since the watermark) with their annotations: facts as of now."""
        seq = self.state.tick()
        project = self.state.project(self.pid)
        if full:
            tasks = ls.tasks(self.pid)
            with_annotations = ls.tasks(self.pid, annotated=True, with_annotations=True)
        else:
            since = _minus(project["tasks_watermark"], SYNC_MARGIN)
            tasks = with_annotations = ls.tasks(
                self.pid, updated_after=since, with_annotations=True
            )
        rows, newest = [], project["tasks_watermark"]
        for t in tasks:
            text, reason = ls_format.task_text(t, cfg)
            rows.append((t["id"], text, reason, t.get("updated_at")))
            newest = _later(newest, t.get("updated_at"))
        self.state.upsert_tasks(self.pid, rows)
        if full:
            gone = self.state.remove_tasks_except(self.pid, {t["id"] for t in tasks})
            if gone:
                log.info("project %d: %d task(s) were deleted in Label Studio", self.pid, len(gone))
        # Annotations: those listed exist; ours on the same tasks that are not listed do not.
        listed = {t["id"]: t.get("annotations") or [] for t in with_annotations}
        scope = {t["id"] for t in tasks} if full else set(listed)
        present = set()
        for anns in listed.values():
            for a in anns:
                self.state.record_annotation(
                    self.pid, {**a, "task": a.get("task") or a.get("task_id")}, seq
                )
                present.add(a["id"])
        known = self.state.annotation_ids(self.pid, scope)
        self.state.record_absent(self.pid, [a for a in known if a not in present], seq)
        unread = self.state.unread_annotations(self.pid)
        for aid in unread:  # content unknown (an upgrade from v1): read it
            a = ls.annotation(aid)
            if a is None:
                self.state.record_absent(self.pid, [aid], seq)
            else:
                self.state.record_annotation(self.pid, a, seq)
        self.state.update_project(
            self.pid, tasks_watermark=newest, total_tasks=len(self.state.task_ids(self.pid))
        )
        skipped = self.state.skipped(self.pid)
        if skipped and full:
            log.warning(
                "project %d: %d task(s) cannot be used and are left alone: %s",
                self.pid,
                len(skipped),
                dict(list(skipped.items())[:5]),
            )

    def _note_settings(self, ls: LabelStudioAPI, info: dict) -> None:
        """Compare the project's settings with what we set; report differences, change nothing -
        except what Label Studio itself does on connect (below)."""
        applied = self.state.project(self.pid)["applied_settings"] or {}
        mv = self.settings.model_version
        if (
            applied
            and info.get("model_version") not in (None, mv)
            and time.time() - applied.get("applied_at", 0) < CONNECT_GRACE
        ):
            # Creating the model, Label Studio sets the project's model version to the model's title
            # when its own copy of the project had none, i.e. over ours, set during that /setup. A
            # title other than ALLABEL_MODEL_VERSION would then leave Uncertainty sampling with no
            # prediction of that version: random tasks. That is Label Studio's doing, not the user's.
            titles = {m.get("title") for m in ls.ml_backends(self.pid)}
            if info["model_version"] in titles:
                self.title_warning = (
                    f"the model is connected with title {info['model_version']!r}, but ALLabel's predictions use model version "
                    f"{mv!r} (ALLABEL_MODEL_VERSION): set the project's model version back to {mv!r}; rename the model to {mv!r}"
                )
                log.warning("project %d: %s", self.pid, self.title_warning)
                ls.update_project(self.pid, model_version=mv)
                info = {**info, "model_version": mv}
        warnings = [self.title_warning] if self.title_warning else []
        for key, value in applied.items():
            if key in info and info[key] != value:
                warnings.append(_drift_message(key, info[key], value))
        if warnings != self.warnings:
            for w in warnings:
                log.warning("project %d: %s", self.pid, w)
        self.warnings = warnings

    # 3-5. plan, settings, budget, run -------------------------------------------------------------
    def _plan_and_run(self, ls: LabelStudioAPI, cfg: NERConfig) -> None:
        s = self.settings
        project = self.state.project(self.pid)
        phase = project["phase"]
        usable = self.state.usable_task_ids(self.pid)
        if not usable:
            self.state.update_project(
                self.pid, message="no usable tasks yet (import tasks with text)"
            )
            return
        annotated = self.state.annotated_tasks(self.pid) & set(usable)
        frozen = phase in ("prelabeling", "done")
        budget = (
            project["budget"]
            if frozen and project["budget"]
            else planner.budget_for(s.budget, len(usable))
        )
        reached = frozen or self.force_run or planner.budget_reached(len(annotated), budget)
        predicted = self.state.predicted_task_ids(self.pid)
        untaken = [t for t in usable if t not in annotated and t not in predicted]
        for_budget, for_reserve = planner.picks_needed(
            budget=budget,
            annotated=len(annotated),
            available=self.state.available(self.pid),
            reserve=s.queue_reserve,
            budget_reached=reached,
            untaken=len(untaken),
        )
        with self._queue_lock:
            taken = annotated | predicted
            position = self.state.next_position(self.pid)
            # The budget's picks: exactly ALLabel's selection for M (annotated tasks pre-chosen).
            entries = self._add(self._select(usable, taken, for_budget), position)
            taken |= {e.task_id for e in entries}
            # The reserve's: the next ALLabel picks, selected ahead so that webhooks can refill the
            # reserve at once (``refill``) while this thread selects the next ones.
            self._top_up_spare(usable, taken, for_reserve + s.queue_reserve)
            self._add(self._take_spare(taken, for_reserve), self.state.next_position(self.pid))
        self.state.update_project(self.pid, budget=budget)
        if self.state.pending_summary(self.pid)[0] or self._audit_needed:
            self._push(
                ls, force=True
            )  # the queue reaches Label Studio before the project is switched to it
        if project["applied_settings"] is None or self._reassert:
            self._apply_settings(ls, phase=("prelabeling" if reached else phase))
        if phase == "new":
            self.state.update_project(self.pid, phase="planned", message=None)
            phase = "planned"
            log.info(
                "project %d: queue of %d task(s) in Label Studio (budget %d)",
                self.pid,
                len(self.state.queue(self.pid)),
                budget,
            )
        self.planned.set()
        if phase == "planned" and reached:
            log.info(
                "project %d: budget of %d human-annotated task(s) reached; pre-annotating the rest",
                self.pid,
                budget,
            )
            self.state.update_project(self.pid, phase="prelabeling", message=None)
            phase = "prelabeling"
            self._show_predictions(ls)
            self._review_tab(ls)
        if phase in ("prelabeling", "done"):
            self._manage_run(phase, set(usable), annotated)
        self._reassert = False

    def _select(self, usable: list[int], taken: set[int], count: int) -> list[tuple[int, str]]:
        """The next ``count`` ALLabel picks with ``taken`` as pre-chosen: (task id, stage).

        Near-duplicates of a chosen or offered task and length outliers are never offered
        (``screening.py``; ALLABEL_PAPER_EXACT=1 gives the paper's selection)."""
        s = self.settings
        count = min(count, len(usable) - len(taken & set(usable)))
        if count <= 0:
            return []
        texts = dict(self.state.usable_tasks(self.pid))
        corpus = [texts[t] for t in usable]
        sim = self._similarity(corpus)
        index = {t: i for i, t in enumerate(usable)}
        exclude = None
        if s.exclude_duplicates or s.exclude_outliers:
            found = screen(
                corpus,
                chosen=[index[t] for t in taken if t in index],
                duplicates=s.exclude_duplicates,
                threshold=s.duplicate_threshold,
                outliers=s.exclude_outliers,
                length_rule=LengthRule(long_factor=s.outlier_factor, short_factor=s.outlier_factor),
            )
            exclude = found.excluded
            self.report["screening"] = found.summary()
            count = min(count, int((~exclude).sum()) - len(taken & set(usable)))
            if count <= 0:
                return []
        runner = make_runner(s.dask_scheduler) if s.dask_scheduler else None

        def pick(pre, n):
            sel = select(
                sim,
                n,
                k=s.k,
                ratios=s.ratios,
                order=s.order,
                pre_chosen=pre,
                exclude=exclude,
                runner=runner,
            )
            return list(zip(sel.indices, sel.stages))

        picks = [(e.task_id, e.stage) for e in planner.extend_queue(usable, taken, count, 0, pick)]
        self._similarities.save(sim)  # the scan's row maxima, for the next plan and the run
        return picks

    def _top_up_spare(self, usable: list[int], taken: set[int], want: int) -> None:
        want = min(want, len(set(usable) - taken))
        spare = (
            [(t, st) for t, st in self._spare if t not in taken]
            if self._spare_key == tuple(usable)
            else []
        )
        if len(spare) < want:
            spare = self._select(usable, taken, want)
        self._spare, self._spare_key = spare, tuple(usable)

    def _take_spare(self, taken: set[int], count: int) -> list[tuple[int, str]]:
        ready = [(t, st) for t, st in self._spare if t not in taken]
        picked, self._spare = ready[:count], ready[count:]
        return picked

    def _add(self, picks: list[tuple[int, str]], position: int) -> list[planner.QueueEntry]:
        entries = [planner.QueueEntry(t, position + n, st) for n, (t, st) in enumerate(picks)]
        if entries:
            self.state.add_to_queue(self.pid, [(e.task_id, e.position, e.stage) for e in entries])
            log.info("project %d: %d task(s) added to the ALLabel queue", self.pid, len(entries))
        return entries

    def refill(self, annotated_now: list[int]) -> None:
        """Called from a webhook, inside Label Studio's request that saves an annotation: if that
        annotation takes the reserve below its size, queue the next spare pick and push it before
        answering, so the annotator's next task is already there. Only orders tasks; costs nothing."""
        if self.state.project(self.pid)["phase"] == "new":
            return
        with self._queue_lock:
            missing = self.settings.queue_reserve - self.state.available(self.pid, annotated_now)
            if missing <= 0 or not self._spare:
                return
            taken = (
                self.state.predicted_task_ids(self.pid)
                | self.state.annotated_tasks(self.pid)
                | set(annotated_now)
            )
            entries = self._add(
                self._take_spare(taken, missing), self.state.next_position(self.pid)
            )
        if entries:
            todo = {
                t: v
                for t, v in self.state.pending_pushes(self.pid).items()
                if t in {e.task_id for e in entries}
            }
            reconcile.push(
                self.state,
                self.ls(),
                self.pid,
                self.settings.model_version,
                todo,
                self.settings.push_batch,
            )
        self._plan_now = True  # select the next spares
        self._wake.set()

    def _apply_settings(self, ls: LabelStudioAPI, phase: str) -> None:
        """The project settings the queue needs, set once (and again on Start Training only)."""
        want = {
            "sampling": SAMPLING,
            "model_version": self.settings.model_version,
            "show_collab_predictions": phase in ("prelabeling", "done"),
        }
        ls.update_project(self.pid, **want)
        project = self.state.project(self.pid)
        self.state.update_project(self.pid, applied_settings={**want, "applied_at": time.time()})
        self._next_probe = min(
            self._next_probe, time.monotonic() + 3
        )  # see what Label Studio's connect did (no event tells)
        self.warnings = []
        if project["view_id"] is None:
            views = ls.views(self.pid)
            mine = next(
                (v["id"] for v in views if (v.get("data") or {}).get("title") == QUEUE_VIEW_TITLE),
                None,
            )
            if mine is None:
                if not views:  # Label Studio shows its default tab only when a project has no tab at all: keep it
                    ls.create_view(self.pid, {"title": "Default"})
                mine = ls.create_view(
                    self.pid,
                    {
                        "title": QUEUE_VIEW_TITLE,
                        "ordering": ["tasks:predictions_score"],
                        "filters": {
                            "conjunction": "and",
                            "items": [
                                {
                                    "filter": "filter:tasks:total_annotations",
                                    "operator": "equal",
                                    "type": "Number",
                                    "value": 0,
                                }
                            ],
                        },
                    },
                )
            self.state.update_project(self.pid, view_id=mine)
        log.info("project %d: %s", self.pid, ", ".join(f"{k} = {v!r}" for k, v in want.items()))

    def _show_predictions(self, ls: LabelStudioAPI) -> None:
        """At the budget, pre-annotations become visible to annotators - unless the user chose otherwise."""
        applied = self.state.project(self.pid)["applied_settings"] or {}
        if applied.get("show_collab_predictions") is not False:
            return
        current = ls.project(self.pid).get("show_collab_predictions")
        if current is False:
            ls.update_project(self.pid, show_collab_predictions=True)
            self.state.update_project(
                self.pid, applied_settings={**applied, "show_collab_predictions": True}
            )

    def _review_tab(self, ls: LabelStudioAPI) -> None:
        """A Data Manager tab of the pre-annotated tasks, lowest confidence first (created once)."""
        if not any(
            (v.get("data") or {}).get("title") == REVIEW_VIEW_TITLE for v in ls.views(self.pid)
        ):
            ls.create_view(self.pid, review_view(self.settings))

    def _manage_run(self, phase: str, usable: set[int], annotated: set[int]) -> None:
        if self._run_thread is not None and self._run_thread.is_alive():
            return
        if self.hold and not self._hold_lifted():
            self.state.update_project(self.pid, message=self.hold.reason)
            return
        self.hold = None
        preds = self.state.predictions(self.pid)
        todo = [
            t for t in usable if t not in annotated and (t not in preds or preds[t].result is None)
        ]
        retry_later = {
            t
            for t in todo
            if preds.get(t) and preds[t].failures and time.monotonic() < self._llm_retry_at
        }
        startable = [t for t in todo if t not in retry_later]
        if (startable or self._rerun) and not self._stop.is_set():
            if phase == "done":
                self.state.update_project(self.pid, phase="prelabeling")
            queue_positions = {t: p.position for t, p in preds.items() if p.position is not None}
            order = planner.run_order(startable, queue_positions)
            rerun, self._rerun = self._rerun, False
            self._run_thread = threading.Thread(
                target=self._run, args=(order, rerun), name=f"alllabel-run-{self.pid}", daemon=True
            )
            self._run_thread.start()
        elif not todo:
            if phase != "done":
                done = sum(p.result is not None for p in preds.values())
                self.state.update_project(
                    self.pid,
                    phase="done",
                    message=f"pre-annotated {done} task(s) with {self.orch.annotator_name()}",
                )
                log.info("project %d: pre-annotation complete", self.pid)
        else:
            wait = max(0.0, self._llm_retry_at - time.monotonic())
            error = next((preds[t].error for t in todo if preds.get(t) and preds[t].error), None)
            self.state.update_project(
                self.pid,
                message=f"{len(todo)} task(s) failed to pre-annotate; retrying in {wait:.0f}s ({error})",
            )

    def _hold_lifted(self) -> bool:
        h = self.hold
        if h.kind == "manual":
            return bool(self.state.project(self.pid)["run_approved"])
        if h.kind == "min_f1":  # more (or changed) human annotations: check again
            return bulk.gold_key(self.state, self.pid) != h.key
        if h.kind == "cost_cap":
            return self.settings.max_cost_usd != h.key
        if h.kind == "batch":
            return time.monotonic() >= self._hold_since + self.orch.llm_config.batch_poll
        return True

    def _run(self, order: list[int], rerun: bool) -> None:
        """The bulk pre-annotation (its own thread): results are saved one by one and pushed by the loop."""
        out = None
        try:
            cfg = parse_label_config(self.state.project(self.pid)["label_config"])
            corpus = bulk.Corpus.load(self.state, self.pid, cfg)
            if not corpus.gold:
                raise ValueError("no human-annotated tasks to use as demonstrations yet")
            annotator = self.orch.annotator(cfg)
            sim = self._similarity(corpus.texts)
            if rerun:
                annotated = self.state.annotated_tasks(self.pid)
                old = bulk.stale(
                    corpus,
                    annotator,
                    sim,
                    self.state.predictions(self.pid),
                    [t for t in corpus.ids if t not in annotated],
                    self.settings.k,
                )
                self.report["stale"] = {"tasks": len(old), "examples": dict(list(old.items())[:3])}
                if old:
                    log.info(
                        "project %d: %d pre-annotation(s) are out of date (%s); redoing them",
                        self.pid,
                        len(old),
                        next(iter(old.values())),
                    )
                order = order + [t for t in old if t not in set(order)]
            self.report["progress"] = {
                "total": len(order),
                "done": 0,
                "failed": 0,
                "started": time.time(),
                "annotator": annotator.name,
            }
            log.info(
                "project %d: pre-annotating %d task(s) with %s from %d demonstration(s)",
                self.pid,
                len(order),
                annotator.name,
                len(corpus.gold),
            )

            def report(name, value):
                self.report[name] = (
                    {**self.report.get(name, {}), **value} if name == "progress" else value
                )

            out = bulk.run(
                self.state,
                self.pid,
                corpus,
                annotator,
                sim,
                order,
                settings=self.settings,
                approved=bool(self.state.project(self.pid)["run_approved"]),
                quality_done=self._quality_key,
                report=report,
                saved=self._wake.set,
                stop=self._stop,
            )
            if out.quality:
                self._quality_key = out.quality["gold_key"]
            self.hold, self._hold_since = out.hold, time.monotonic()
            self.blocker = out.blocker
            if out.hold:
                log.warning("project %d: %s", self.pid, out.hold.reason)
                self.state.update_project(self.pid, message=out.hold.reason)
            failed = out.failed
        except Exception as e:  # noqa: BLE001 - reported in /status, retried with backoff
            log.exception("project %d: pre-annotation run failed", self.pid)
            self.state.update_project(
                self.pid, message=f"pre-annotation run failed: {type(e).__name__}: {e}"
            )
            failed = 1
        if failed:
            self._llm_backoff = min(self.settings.llm_max_backoff, max(5.0, 2 * self._llm_backoff))
            self._llm_retry_at = time.monotonic() + self._llm_backoff
            log.warning(
                "project %d: %d pre-annotation(s) failed; retrying in %.0fs",
                self.pid,
                failed,
                self._llm_backoff,
            )
            if self.blocker:
                log.error("project %d: pre-annotation is blocked: %s", self.pid, self.blocker)
        else:
            self._llm_backoff = 0.0
            self._llm_retry_at = 0.0
        self.runs_finished += 1
        self._plan_now = True
        self._wake.set()

    def _similarity(self, texts: list[str]):
        """One similarity per corpus for planning, re-planning and pre-annotation (``simcache``)."""
        return self._similarities.get(
            texts, self.settings.similarity, model=self.settings.sbert_model
        )

    # 6. push --------------------------------------------------------------------------------------
    def _push(self, ls: LabelStudioAPI, force: bool = False) -> None:
        mv = self.settings.model_version
        if self._audit_needed or self.state.unsure_pushes(self.pid):
            found = reconcile.audit(self.state, ls, self.pid, mv)
            self.state.update_project(self.pid, predictions_baseline=found["others"])
            self._audit_needed = False
        n, oldest = self.state.pending_summary(self.pid)
        if not n:
            return
        running = self._run_thread is not None and self._run_thread.is_alive()
        if (
            not force
            and running
            and n < self.settings.push_batch
            and time.time() - (oldest or 0) < self.settings.push_delay
        ):
            return  # wait for a fuller batch, but never longer than push_delay
        sent = reconcile.push(
            self.state,
            ls,
            self.pid,
            mv,
            self.state.pending_pushes(self.pid),
            self.settings.push_batch,
        )
        if sent:
            log.info("project %d: %d prediction(s) sent to Label Studio", self.pid, sent)


def review_view(settings) -> dict:
    """The review tab: unannotated tasks with a pre-annotation, lowest confidence first. Queue
    entries (score = position x 1e-6) stay out of it while the queue is under 1,000 positions."""
    return {
        "title": REVIEW_VIEW_TITLE,
        "ordering": ["tasks:predictions_score"],
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:total_annotations",
                    "operator": "equal",
                    "type": "Number",
                    "value": 0,
                },
                {
                    "filter": "filter:tasks:predictions_score",
                    "operator": "greater",
                    "type": "Number",
                    "value": 0.001,
                },
            ],
        },
    }


def _drift_message(key: str, current, ours) -> str:
    if key == "sampling":
        return f"queue order off: project sampling is {current!r} (ALLabel needs {ours!r}; press Start Training to restore it)"
    if key == "model_version":
        return f"queue order off: the project shows predictions of model version {current!r}, not {ours!r} (press Start Training to restore it)"
    if key == "show_collab_predictions":
        state = "on" if current else "off"
        return f"'Use predictions to prelabel tasks' was switched {state} in the project settings; left as the user set it"
    return f"project setting {key} is {current!r} (ALLabel set {ours!r})"


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _later(a: str | None, b: str | None) -> str | None:
    da, db = _parse(a), _parse(b)
    if db is None:
        return a
    if da is None or db > da:
        return b
    return a


def _minus(ts: str | None, delta: timedelta) -> str | None:
    d = _parse(ts)
    return None if d is None else (d - delta).isoformat().replace("+00:00", "Z")
