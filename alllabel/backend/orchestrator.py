"""The backend's entry points: what Label Studio's calls do, and the controllers they drive.

* ``/setup`` checks that the backend can use Label Studio's API (cached), registers the project
  and starts its controller (``controller.ProjectController``); a project's first ``/setup``
  waits up to ``connect_wait`` seconds for its queue, so annotators get the ALLabel order from
  the first task.
* ``/webhook`` records what events *claim* and wakes the controller, which confirms the claims
  with Label Studio before anything counts. It answers within milliseconds (LS waits 1 s).
* ``/predict`` answers with our prediction for tasks Label Studio holds none of ours for.
* ``/status`` reports every project, including what the user should know or fix.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable

from alllabel.backend import ls_format
from alllabel.backend.controller import ProjectController
from alllabel.backend.label_config import NERConfig, parse_label_config
from alllabel.backend.ls_client import LabelStudioAPI, LabelStudioError
from alllabel.backend.settings import Settings
from alllabel.backend.state import DirectoryLock, State
from alllabel.backend.webhook_auth import WebhookAuth
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.prelabel.annotators import LLMAnnotator, ProjectionAnnotator
from alllabel.prelabel.prompt import LabelSchema, PromptBuilder

log = logging.getLogger("alllabel")

CHECK_OK_TTL = 60.0  # a successful check of Label Studio's URL and key is trusted this long
CHECK_FAIL_TTL = 3.0  # a failed one is retried after this long


class SetupError(RuntimeError):
    """The backend cannot work for this project; the message is shown in Label Studio."""


def project_id_of(key) -> int:
    """LS sends ``"<id>.<created timestamp>"`` in /setup and /predict; webhooks send an int."""
    try:
        return int(str(key).split(".", 1)[0])
    except ValueError:
        raise ValueError(f"cannot read a project id from {key!r}") from None


class Orchestrator:
    def __init__(
        self,
        settings: Settings | None = None,
        ls_factory: Callable[[], LabelStudioAPI] | None = None,
        llm_config: LLMConfig | None = None,
    ):
        self.settings = settings or Settings.from_env()
        self._dir_lock = DirectoryLock(self.settings.state_dir, wait=self.settings.lock_wait)
        self.state = State(self.settings.state_dir)
        self.ls_factory = ls_factory or LabelStudioAPI.from_env
        self.llm_config = llm_config or LLMConfig.from_env()
        self._llm: LLMClient | None = None
        self._ls: LabelStudioAPI | None = None
        self._ls_from = None
        self._lock = threading.RLock()
        self._checks: dict[int, tuple[float, str | None]] = {}
        self.controllers: dict[int, ProjectController] = {}
        self.webhook_auth = WebhookAuth(
            self.settings.state_dir,
            self.basic_auth_header() if self.settings.basic_auth_user else None,
            known=lambda pid: self.state.project(pid) is not None,
            wake=lambda pid: self.controller(pid).wake(probe=True),
        )
        for pid in self.state.projects():  # a restart picks every project up where it was
            self.controller(pid)
        log.info(
            "alllabel backend: model version %r, state in %s, annotator %s",
            self.settings.model_version,
            self.settings.state_dir,
            self.annotator_name(),
        )

    # --- shared clients --------------------------------------------------------------------------
    def ls(self) -> LabelStudioAPI:
        with self._lock:
            if self._ls is None or self._ls_from is not self.ls_factory:
                self._ls, self._ls_from = self.ls_factory(), self.ls_factory
            return self._ls

    def controller(self, pid: int) -> ProjectController:
        with self._lock:
            if pid not in self.controllers:
                self.controllers[pid] = ProjectController(self, pid)
            return self.controllers[pid]

    def basic_auth_header(self) -> str:
        s = self.settings
        return (
            "Basic "
            + base64.b64encode(f"{s.basic_auth_user}:{s.basic_auth_pass or ''}".encode()).decode()
        )

    # --- protocol entry points (fast) ------------------------------------------------------------
    def setup(self, project_key, label_config: str) -> str:
        pid = project_id_of(project_key)
        cfg = parse_label_config(
            label_config
        )  # UnsupportedConfig -> the caller answers 400 with the reason
        self.check_label_studio(pid)
        known = self.state.project(pid)
        if known is None or known["label_config"] != label_config:
            self.state.register(pid, label_config)
            if cfg.ignored:
                log.warning(
                    "project %d: the labeling config also has %s; ALLabel pre-annotates only <Labels name=%r>",
                    pid,
                    ", ".join(cfg.ignored),
                    cfg.from_name,
                )
        c = self.controller(pid)
        if known is None or known["label_config"] != label_config:
            c.wake(probe=True, full=known is not None)
        # LS creates the webhook between the two /setup calls of a connect: sign it at once.
        self.webhook_auth.request_check(pid, unsigned_only=True)
        if known is None:
            c.planned.wait(
                self.settings.connect_wait
            )  # annotators get the ALLabel order from the first task
        return self.settings.model_version

    def check_label_studio(self, pid: int) -> None:
        """Raise ``SetupError`` saying what to fix if the backend cannot read this project through
        LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY. Cached: LS calls /setup on every /next."""
        now = time.monotonic()
        until, error = self._checks.get(pid, (0.0, None))
        if now >= until:
            try:
                ls = self.ls()
                ls.whoami(timeout=1.5)
                ls.project(pid, timeout=1.5)
                error = None
            except LabelStudioError as e:
                error = str(e)
                if e.kind == "not_found":
                    error = (
                        f"project {pid} is not in the Label Studio at LABEL_STUDIO_URL={ls.url}: "
                        "point LABEL_STUDIO_URL at the Label Studio this project lives in"
                    )
                log.error("project %d: %s", pid, error)
            self._checks[pid] = (now + (CHECK_FAIL_TTL if error else CHECK_OK_TTL), error)
        if error:
            raise SetupError(error)
        c = self.controllers.get(pid)
        if (
            c is not None and c.blocker
        ):  # shown on the model's card in Label Studio (it calls /setup there)
            raise SetupError(f"pre-annotation is blocked: {c.blocker}")

    def predict(self, project_key, tasks: list[dict]) -> list:
        """One item per task, in order: our prediction for it, or [] (none, or already in Label Studio)."""
        pid = project_id_of(project_key) if project_key is not None else None
        if pid is None or self.state.project(pid) is None:
            return [[] for _ in tasks]
        ids = [t.get("id") for t in tasks]
        preds = self.state.predictions(pid, [i for i in ids if isinstance(i, int)])
        mv = self.settings.model_version
        out = []
        for tid in ids:
            p = preds.get(tid)
            want = ls_format.desired(p.result, p.score, p.position) if p else None
            # Label Studio stores what /predict returns: answer only if no push of ours is on its way.
            if want is not None and self.state.pulled(pid, tid, ls_format.digest(*want)):
                out.append({"result": want[0], "score": want[1], "model_version": mv})
            else:
                out.append([])
        return out

    def webhook(self, payload: dict) -> dict:
        action = payload.get("action")
        project = payload.get("project") or {}
        pid = project.get("id") if isinstance(project, dict) else project
        if not isinstance(pid, int):
            return {"status": "ignored", "reason": "no project in payload"}
        if self.state.project(pid) is None:
            # Label Studio calls /setup when the backend is connected; events of other projects are not ours.
            return {
                "status": "ignored",
                "reason": f"project {pid} is not connected to this backend",
            }
        c = self.controller(pid)
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"):
            anns = payload.get("annotation")
            anns = anns if isinstance(anns, list) else [anns or {}]
            claims = []
            for a in anns:
                task = a.get("task")
                task_id = task.get("id") if isinstance(task, dict) else task
                if isinstance(a.get("id"), int) and isinstance(task_id, int):
                    claims.append((a["id"], task_id))
            if not claims:
                return {"status": "ignored", "reason": "annotation without id or task"}
            self.state.claim_annotations(
                pid, claims
            )  # confirmed with Label Studio before they count
            if action != "ANNOTATION_UPDATED":
                try:
                    c.refill(
                        [t for _, t in claims]
                    )  # the annotator's next task is queued before LS answers them
                except LabelStudioError as e:
                    log.warning(
                        "project %d: could not refill the queue from a webhook (%s); the controller will",
                        pid,
                        e,
                    )
            c.wake()
        elif action == "ANNOTATIONS_DELETED":
            self.state.claim_deletions(
                pid,
                [
                    a["id"]
                    for a in payload.get("annotations") or []
                    if isinstance(a, dict) and isinstance(a.get("id"), int)
                ],
            )
            c.wake()
        elif action in ("TASKS_CREATED", "TASKS_DELETED", "PROJECT_UPDATED"):
            c.wake(probe=True)
        elif action == "START_TRAINING":
            # The user asks for it: restore the queue settings, re-read everything, retry failures now.
            c.wake(full=True, reassert=True, audit=True)
        else:
            return {"status": "ignored", "action": action}
        return {"status": "ok", "action": action}

    # --- pre-annotation ------------------------------------------------------------------------
    def _uses_llm(self) -> bool:
        if self.settings.annotator == "projection":
            return False
        return self.settings.annotator == "llm" or self.llm_config.configured

    def annotator_name(self) -> str:
        return (
            f"llm-{self.llm_config.model}"
            if self._uses_llm()
            else "projection-offline (no LLM configured)"
        )

    def annotator(self, cfg: NERConfig):
        descriptions = {
            **dict(cfg.descriptions),
            **{k: v for k, v in self.settings.label_descriptions.items() if k in cfg.labels},
        }
        schema = LabelSchema(list(cfg.labels), descriptions)
        if not self._uses_llm():
            log.warning(
                "no LLM configured (OPENAI_API_KEY / OPENAI_BASE_URL): using the offline projection annotator"
            )
            return ProjectionAnnotator(schema)
        with self._lock:
            if self._llm is None:
                self._llm = LLMClient(
                    self.llm_config, LLMCache(self.settings.state_dir / "llm_cache.sqlite3")
                )
        s = self.settings
        prompt = PromptBuilder(
            schema, **{k: v for k, v in (("role", s.prompt_role), ("task", s.prompt_task)) if v}
        )
        return LLMAnnotator(self._llm, schema, prompt)

    # --- progress --------------------------------------------------------------------------------
    def status(self, pid: int | None = None) -> dict:
        projects = [pid] if pid is not None else self.state.projects()
        found = [self.project_status(p) for p in projects if self.state.project(p) is not None]
        out = {
            "model_version": self.settings.model_version,
            "annotator": self.annotator_name(),
            "projects": found,
        }
        out["webhooks"] = self.webhook_auth.counts()
        if self._llm is not None:
            out["llm_usage"] = self._llm.usage.as_dict(self._llm.config.prices())
        if self._ls is not None:
            out["label_studio_requests"] = self._ls.requests
        return out

    def project_status(self, pid: int) -> dict:
        return project_status(self.state, pid, self.controllers.get(pid))

    def prelabel_now(self, pid: int, timeout: float | None = None) -> dict:
        """Pre-annotate a project now, whatever its budget (the CLI's ``prelabel --project``): wait
        for one run to finish and its predictions to reach Label Studio."""
        self.setup(pid, self.ls().project(pid)["label_config"])
        c = self.controller(pid)
        before = c.runs_finished
        c.force_run = True
        c.wake(
            full=True, reassert=True, audit=True
        )  # as Start Training: approve, retry, redo what is stale
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if c.runs_finished > before and c.idle():
                break
            if (
                c.runs_finished == before
                and self.state.project(pid)["phase"] == "done"
                and c.idle()
            ):
                break  # nothing was left to pre-annotate
            time.sleep(0.2)
        return self.project_status(pid)

    def wait_idle(self, pid: int | None = None, timeout: float = 60.0) -> bool:
        """Wait until the controllers (of one project, or all) have nothing left to do."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cs = [self.controllers[pid]] if pid is not None else list(self.controllers.values())
            if all(c.idle() for c in cs):
                time.sleep(0.2)  # settle: a wake-up may be on its way
                if all(c.idle() for c in cs):
                    return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        """Stop every controller and run (tasks not started are left for the next process), then let
        another process have the state."""
        for c in list(self.controllers.values()):
            c.stop()
        self.state.close()
        self._dir_lock.release()


def project_status(state: State, pid: int, controller: ProjectController | None = None) -> dict:
    """A project's progress as /status reports it (the controller adds what only it knows)."""
    p = state.project(pid)
    queue = state.queue(pid)
    annotated = state.annotated_tasks(pid)
    preds = state.predictions(pid)
    queue_ids = {q.task_id for q in queue}
    c = controller
    out = {
        "project": pid,
        "phase": p["phase"],
        "message": (c.error if c and c.error else None) or p["message"],
        "total_tasks": p["total_tasks"],
        "budget": p["budget"],
        "annotated_tasks": len(annotated),
        "annotated_from_queue": len(annotated & queue_ids),
        "unconfirmed_claims": len(state.claims(pid)),
        "queue": {"selected": len(queue), "pushed": sum(q.pushed is not None for q in queue)},
        "prelabels": {
            "done": sum(x.result is not None for x in preds.values()),
            "failed": sum(x.result is None and x.error is not None for x in preds.values()),
            "pushed": sum(x.result is not None and x.pushed == x.want for x in preds.values()),
        },
        "skipped_tasks": len(state.skipped(pid)),
        "warnings": config_warnings(p["label_config"]) + (list(c.warnings) if c else []),
    }
    if p["phase"] in ("prelabeling", "done") or (c and c.report):
        run = dict(c.report) if c else {}
        run["spent_usd"] = round(p["spent_usd"], 4)
        if c and c.hold:
            run["hold"] = c.hold.reason
        if c and c.blocker:
            run["blocked"] = c.blocker
        out["run"] = run
    return out


def config_warnings(label_config: str) -> list[str]:
    try:
        cfg = parse_label_config(label_config)
    except ValueError as e:
        return [f"the labeling config cannot be pre-annotated: {e}"]
    if not cfg.ignored:
        return []
    return [
        f'the labeling config also has {", ".join(cfg.ignored)}: ALLabel selects tasks and pre-annotates <Labels name="{cfg.from_name}"> only; the rest is left to annotators'
    ]
