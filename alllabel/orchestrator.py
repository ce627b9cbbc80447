"""What the backend does for each Label Studio project, from connection to pre-annotation.

1. ``/setup`` registers the project (its labeling config) and schedules a *plan*.
2. *plan* (background): fetch the tasks, run the ALLabel selection for the budget M, push one
   empty prediction per selected task whose score is its queue position (``position * 1e-6``,
   lowest first), switch the project to Uncertainty sampling on our model version, and add an
   "ALLabel queue" Data Manager tab. New tasks later get the same treatment (re-plan with the
   existing queue and annotations pre-chosen).
3. Annotation webhooks are only recorded (SQLite, well under LS's 1 s timeout); when M tasks
   carry human annotations, *prelabel* is scheduled.
4. *prelabel* (background): every unlabeled task gets a pre-annotation from the k most similar
   human-annotated tasks, saved in the state first, then pushed in bulk with its confidence as
   score (a selected task's queue prediction is updated in place, never duplicated).
Jobs run one at a time on a worker thread; each is idempotent, so re-running one after a crash
finishes the work without duplicates.
"""
from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Callable

from .annotators import LLMAnnotator, ProjectionAnnotator, prelabel
from .label_config import NERConfig, parse_label_config
from .llm import LLMCache, LLMClient, LLMConfig
from .ls_client import SAMPLING, LabelStudioAPI, LabelStudioError
from .prompting import LabelSchema, PromptBuilder
from .selection import select
from .settings import Settings, resolve_budget
from .similarity import make_similarity
from .state import State

log = logging.getLogger("alllabel")

QUEUE_SCORE_STEP = 1e-6  # queue position p is pushed as score p * 1e-6 (LS only keeps scores in [0, 1])


def project_id_of(key) -> int:
    """LS sends ``"<id>.<created timestamp>"`` in /setup and /predict; webhooks send an int."""
    try:
        return int(str(key).split(".", 1)[0])
    except ValueError:
        raise ValueError(f"cannot read a project id from {key!r}") from None


class Jobs:
    """One worker thread running (job, project) pairs in order; a pair already waiting is not queued twice."""

    def __init__(self, run: Callable[[str, int], None]):
        self._run = run
        self._queue: queue.Queue = queue.Queue()
        self._pending: set[tuple[str, int]] = set()
        self._busy = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._loop, name="alllabel-jobs", daemon=True).start()

    def submit(self, job: str, project_id: int) -> bool:
        with self._cond:
            if (job, project_id) in self._pending:
                return False
            self._pending.add((job, project_id))
            self._busy += 1
        self._queue.put((job, project_id))
        return True

    def _loop(self) -> None:
        while True:
            job, pid = self._queue.get()
            with self._cond:
                self._pending.discard((job, pid))
            try:
                self._run(job, pid)
            except Exception:  # noqa: BLE001 - logged; the job records its own error message
                log.exception("job %s for project %s failed", job, pid)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)


def _span_result(cfg: NERConfig, span) -> dict:
    r = {
        "from_name": cfg.from_name, "to_name": cfg.to_name, "type": "labels",
        "value": {"start": span.start, "end": span.end, "text": span.text, "labels": [span.label]},
    }
    if span.score is not None:
        r["score"] = span.score
    return r


def _human_spans(cfg: NERConfig, task: dict) -> tuple[list[dict] | None, list[int]]:
    """Spans of the task's latest non-cancelled annotation (None if none) and all such annotation ids."""
    anns = [a for a in (task.get("annotations") or []) if not a.get("was_cancelled")]
    if not anns:
        return None, []
    latest = max(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
    spans = []
    for r in latest.get("result") or []:
        v = r.get("value") or {}
        if r.get("from_name") == cfg.from_name and isinstance(v.get("start"), int) and isinstance(v.get("end"), int) and v.get("labels"):
            spans.append({"start": v["start"], "end": v["end"], "label": v["labels"][0]})
    return spans, [a["id"] for a in anns]


class Orchestrator:
    def __init__(self, settings: Settings | None = None, ls_factory: Callable[[], LabelStudioAPI] | None = None, llm_config: LLMConfig | None = None):
        self.settings = settings or Settings.from_env()
        self.state = State(self.settings.state_dir)
        self.ls_factory = ls_factory or LabelStudioAPI.from_env
        self.llm_config = llm_config or LLMConfig.from_env()
        self._llm: LLMClient | None = None
        self._last_sync: dict[int, float] = {}
        self.jobs = Jobs(self._run_job)
        for pid in self.state.projects():  # a restart in the middle of pre-labeling picks it up again
            if self.state.project(pid)["phase"] == "prelabeling":
                self.jobs.submit("prelabel", pid)
        log.info("alllabel backend: model version %r, state in %s, annotator %s", self.settings.model_version, self.settings.state_dir, self.annotator_name())

    # --- protocol entry points (fast) ------------------------------------------------------------
    def setup(self, project_key, label_config: str) -> str:
        pid = project_id_of(project_key)
        parse_label_config(label_config)  # UnsupportedConfig -> the caller answers 400
        known = self.state.project(pid)
        changed = known is None or known["label_config"] != label_config
        if changed:
            self.state.register(pid, label_config)
        # LS calls /setup before every prediction batch and on every /next: plan at once for a
        # new project, otherwise re-sync at most every sync_interval seconds.
        self.schedule_sync(pid, force=changed)
        return self.settings.model_version

    def schedule_sync(self, pid: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_sync.get(pid, -1e9) >= self.settings.sync_interval:
            self._last_sync[pid] = now
            self.jobs.submit("plan", pid)

    def predict(self, project_key, tasks: list[dict]) -> list:
        """One item per task, in order: our stored prediction for it, or [] (no prediction)."""
        pid = project_id_of(project_key) if project_key is not None else None
        ids = [t.get("id") for t in tasks]
        if pid is None or self.state.project(pid) is None:
            return [[] for _ in tasks]
        stored = self.state.prelabels(pid, [i for i in ids if isinstance(i, int)])
        pre = {t: p for t, p in stored.items() if p["result"] is not None}
        queued = {e["task_id"]: e for e in self.state.queue(pid)}
        mv = self.settings.model_version
        out = []
        for tid in ids:
            if tid in pre:
                out.append({"result": pre[tid]["result"], "score": pre[tid]["score"], "model_version": mv})
            elif tid in queued:
                out.append({"result": [], "score": queued[tid]["score"], "model_version": mv})
            else:
                out.append([])
        return out

    def webhook(self, payload: dict) -> dict:
        action = payload.get("action")
        project = payload.get("project") or {}
        pid = project.get("id") if isinstance(project, dict) else None
        if pid is None:
            return {"status": "ignored", "reason": "no project in payload"}
        if self.state.project(pid) is None:
            if not project.get("label_config"):
                return {"status": "ignored", "reason": f"project {pid} is not connected"}
            self.setup(pid, project["label_config"])
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            ann = payload.get("annotation") or {}
            task = ann.get("task")
            task_id = task.get("id") if isinstance(task, dict) else task
            if ann.get("id") is None or task_id is None:
                return {"status": "ignored", "reason": "annotation without id or task"}
            self.state.record_annotation(pid, ann["id"], task_id, bool(ann.get("was_cancelled")))
            self.check_budget(pid)
        elif action == "ANNOTATIONS_DELETED":
            self.state.delete_annotations(pid, [a["id"] for a in payload.get("annotations") or [] if "id" in a])
        elif action in ("TASKS_CREATED", "START_TRAINING"):
            self.jobs.submit("plan", pid)
        elif action == "PROJECT_UPDATED":
            if project.get("model_version") != self.settings.model_version or project.get("sampling") != SAMPLING:
                if self.state.project(pid)["phase"] != "new":
                    self.jobs.submit("queue_settings", pid)
        else:
            return {"status": "ignored", "action": action}
        return {"status": "ok", "action": action}

    def check_budget(self, pid: int) -> bool:
        p = self.state.project(pid)
        if p and p["phase"] == "planned" and p["budget"] and len(self.state.annotated_tasks(pid)) >= p["budget"]:
            log.info("project %d: budget of %d human annotations reached; pre-annotating the rest", pid, p["budget"])
            self.jobs.submit("prelabel", pid)
            return True
        return False

    def status(self, pid: int | None = None) -> dict:
        projects = [pid] if pid is not None else self.state.projects()
        found = [s for s in map(self.state.status, projects) if s is not None]
        out = {"model_version": self.settings.model_version, "annotator": self.annotator_name(), "projects": found}
        if self._llm is not None:
            out["llm_usage"] = self._llm.usage.as_dict(self._llm.config.prices())
        return out

    # --- jobs --------------------------------------------------------------------------------------
    def _run_job(self, job: str, pid: int) -> None:
        try:
            {"plan": self.plan, "prelabel": self.prelabel, "queue_settings": self.queue_settings}[job](pid)
        except Exception as e:
            msg = str(e) if isinstance(e, (LabelStudioError, ValueError)) else f"{type(e).__name__}: {e}"
            log.error("project %d: %s failed: %s", pid, job, msg)
            self.state.update_project(pid, message=f"{job} failed: {msg}")
            raise

    def _config(self, pid: int) -> NERConfig:
        return parse_label_config(self.state.project(pid)["label_config"])

    def _fetch(self, pid: int, cfg: NERConfig) -> tuple[list[dict], list[dict]]:
        """(usable tasks as {id, text, spans (None if not human-annotated)}, all tasks).

        Also makes the annotation table match Label Studio and records the unusable tasks."""
        tasks = self.ls_factory().tasks(pid)
        usable, skipped, pairs = [], {}, []
        for t in tasks:
            spans, ann_ids = _human_spans(cfg, t)
            pairs += [(a, t["id"]) for a in ann_ids]
            text = (t.get("data") or {}).get(cfg.value_key)
            if not isinstance(text, str):
                skipped[t["id"]] = f"task data field {cfg.value_key!r} is missing or not text"
            elif not text.strip():
                skipped[t["id"]] = "empty text"
            else:
                usable.append({"id": t["id"], "text": text, "spans": spans})
        self.state.replace_annotations(pid, pairs)
        if skipped:
            log.warning("project %d: %d task(s) cannot be used and are left alone: %s", pid, len(skipped), dict(list(skipped.items())[:5]))
            self.state.set_skipped(pid, skipped)
        return usable, tasks

    def plan(self, pid: int) -> None:
        cfg = self._config(pid)
        s = self.settings
        usable, all_tasks = self._fetch(pid, cfg)
        p = self.state.project(pid)
        if not usable:
            self.state.update_project(pid, total_tasks=len(all_tasks), message="no usable tasks yet (import tasks with text)")
            return
        budget = resolve_budget(s.budget, len(usable))
        queued = self.state.queue(pid)
        index = {t["id"]: i for i, t in enumerate(usable)}
        annotated = {t["id"] for t in usable if t["spans"] is not None}
        taken = annotated | {e["task_id"] for e in queued if e["task_id"] in index}
        new = budget - len(taken)
        if new > 0 and p["phase"] in ("new", "planned"):
            sim = make_similarity([t["text"] for t in usable], s.similarity, model=s.sbert_model)
            sel = select(sim, min(new, len(usable) - len(taken)), k=s.k, ratios=s.ratios, order=s.order, pre_chosen=sorted(index[t] for t in taken))
            start = max((e["position"] for e in queued), default=-1) + 1
            entries = [(usable[i]["id"], start + n, stage, (start + n) * QUEUE_SCORE_STEP) for n, (i, stage) in enumerate(zip(sel.indices, sel.stages))]
            self.state.add_to_queue(pid, entries)
            log.info("project %d: selected %d task(s) for humans (budget %d, %d already taken)", pid, len(entries), budget, len(taken))
        self.state.update_project(pid, budget=budget, total_tasks=len(all_tasks), message=None)
        self._push_queue(pid)
        self.queue_settings(pid)
        if p["phase"] == "new":
            self.state.update_project(pid, phase="planned")
        if not self.check_budget(pid) and p["phase"] in ("prelabeling", "done"):
            self.jobs.submit("prelabel", pid)  # new tasks after pre-annotation started

    def _push_queue(self, pid: int) -> None:
        ls = self.ls_factory()
        mv = self.settings.model_version
        todo = [e for e in self.state.queue(pid) if not e["pushed"]]
        if todo:
            # A crash after LS stored a batch but before we marked it: do not push those again.
            existing = {p.task: p.id for p in ls.predictions(pid, mv)}
            done = [e["task_id"] for e in todo if e["task_id"] in existing]
            self.state.mark_queue_pushed(pid, done, existing)
            todo = [e for e in todo if e["task_id"] not in existing]
            self._import_batches(
                ls, pid, {e["task_id"]: ([], e["score"]) for e in todo}, lambda batch: self.state.mark_queue_pushed(pid, batch)
            )
        missing = [e["task_id"] for e in self.state.queue(pid) if e["prediction_id"] is None]
        if missing:
            ids = {p.task: p.id for p in ls.predictions(pid, mv)}
            self.state.mark_queue_pushed(pid, [t for t in missing if t in ids], ids)

    def _import_batches(self, ls: LabelStudioAPI, pid: int, predictions: dict[int, tuple[list, float]], mark: Callable[[list[int]], None]) -> None:
        """Bulk-import {task: (result, score)} in batches, marking each batch pushed once LS has it."""
        tasks = list(predictions)
        for i in range(0, len(tasks), self.settings.push_batch):
            batch = tasks[i : i + self.settings.push_batch]
            ls.import_predictions(pid, [
                {"task": t, "result": predictions[t][0], "score": predictions[t][1], "model_version": self.settings.model_version} for t in batch
            ])
            mark(batch)

    def queue_settings(self, pid: int) -> None:
        ls = self.ls_factory()
        ls.use_queue(pid, self.settings.model_version)
        ls.ensure_queue_view(pid)
        if self.settings.basic_auth_user:
            token = base64.b64encode(f"{self.settings.basic_auth_user}:{self.settings.basic_auth_pass or ''}".encode()).decode()
            ls.authorize_webhooks(pid, self.settings.model_version, f"Basic {token}")

    # --- pre-annotation ----------------------------------------------------------------------------
    def _uses_llm(self) -> bool:
        mode = self.settings.annotator
        return mode == "llm" or (mode == "auto" and self.llm_config.configured)

    def annotator_name(self) -> str:
        return f"llm-{self.llm_config.model}" if self._uses_llm() else "projection-offline (no LLM configured)"

    def _annotator(self, schema: LabelSchema):
        if not self._uses_llm():
            log.warning("no LLM configured (OPENAI_API_KEY / OPENAI_BASE_URL): using the offline projection annotator")
            return ProjectionAnnotator(schema)
        if self._llm is None:
            self._llm = LLMClient(self.llm_config, LLMCache(self.settings.state_dir / "llm_cache.sqlite3"))
        prompt = PromptBuilder(schema, **{k: v for k, v in (("role", self.settings.prompt_role), ("task", self.settings.prompt_task)) if v})
        return LLMAnnotator(self._llm, schema, prompt)

    def prelabel(self, pid: int) -> None:
        cfg = self._config(pid)
        s = self.settings
        self.state.update_project(pid, phase="prelabeling", message=None)
        usable, _ = self._fetch(pid, cfg)
        gold = {i: t["spans"] for i, t in enumerate(usable) if t["spans"] is not None}
        stored = self.state.prelabels(pid)
        todo = [i for i, t in enumerate(usable) if i not in gold and (t["id"] not in stored or stored[t["id"]]["result"] is None)]
        descriptions = {**dict(cfg.descriptions), **{k: v for k, v in s.label_descriptions.items() if k in cfg.labels}}
        schema = LabelSchema(list(cfg.labels), descriptions)
        annotator = self._annotator(schema)
        if todo:
            if not gold:
                raise ValueError("no human-annotated tasks to use as demonstrations yet")
            sim = make_similarity([t["text"] for t in usable], s.similarity, model=s.sbert_model)
            total = len(todo)
            done = [0]

            def save(r):
                tid = usable[r.index]["id"]
                if r.annotation is None:
                    self.state.save_prelabel(pid, tid, None, None, annotator.name, r.error)
                else:
                    a = r.annotation
                    self.state.save_prelabel(pid, tid, [_span_result(cfg, sp) for sp in a.spans], round(a.score, 6), a.annotator, None)
                done[0] += 1
                if done[0] % 50 == 0 or done[0] == total:
                    log.info("project %d: pre-annotated %d/%d task(s)", pid, done[0], total)

            concurrency = self.llm_config.concurrency if isinstance(annotator, LLMAnnotator) else 1
            prelabel([t["text"] for t in usable], gold, annotator, sim, queries=todo, k=s.k, concurrency=concurrency, on_done=save)
        self._push_prelabels(pid)
        st = self.state.status(pid)["prelabels"]
        self.state.update_project(
            pid, phase="done",
            message=f"pre-annotated {st['done']} task(s) with {annotator.name}" + (f"; {st['failed']} failed (retried on the next sync)" if st["failed"] else ""),
        )

    def _push_prelabels(self, pid: int) -> None:
        ls = self.ls_factory()
        mv = self.settings.model_version
        stored = self.state.prelabels(pid)
        todo = {t: p for t, p in stored.items() if p["result"] is not None and not p["pushed"]}
        if not todo:
            return
        queue_ids = {e["task_id"]: e["prediction_id"] for e in self.state.queue(pid) if e["prediction_id"]}
        existing = ls.predictions(pid, mv)
        # Pushed before a crash but not marked: any of our predictions that is not the queue's.
        already = {p.task: p.id for p in existing if p.task in todo and p.id != queue_ids.get(p.task)}
        self.state.mark_prelabels_pushed(pid, list(already), already)
        in_place = {p.task: p.id for p in existing if p.task in todo and p.task not in already and p.id == queue_ids.get(p.task)}
        for tid, pred_id in in_place.items():
            ls.update_prediction(pred_id, todo[tid]["result"], todo[tid]["score"])
            self.state.mark_prelabels_pushed(pid, [tid], {tid: pred_id})
        rest = [t for t in todo if t not in already and t not in in_place]
        self._import_batches(
            ls, pid, {t: (todo[t]["result"], todo[t]["score"]) for t in rest}, lambda batch: self.state.mark_prelabels_pushed(pid, batch)
        )
        ids = {p.task: p.id for p in ls.predictions(pid, mv) if p.id != queue_ids.get(p.task) or p.task in in_place}
        self.state.mark_prelabels_pushed(pid, [t for t in rest if t in ids], ids)
        log.info("project %d: pushed %d pre-annotation(s) to Label Studio", pid, len(todo))
