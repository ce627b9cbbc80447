"""The backend's entry points: what Label Studio's calls do, and the controllers they drive.

* ``/setup`` checks that the backend can use Label Studio's API (cached) and that the project
  lists this backend (title ALLABEL_MODEL_VERSION, or ALLABEL_BACKEND_URL; otherwise nothing
  changes), registers the project and starts its controller (``controller.ProjectController``,
  given its services, never this object); a project's first ``/setup``
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
from alllabel.backend.controller import ProjectController, Services
from alllabel.backend.decide import MAX_CLAIMS_PER_EVENT, backend_listed
from alllabel.backend.label_config import (
    NERConfig,
    TextConfig,
    config_warning,
    parse_label_config,
)
from alllabel.backend.ls_client import LabelStudioAPI, LabelStudioError
from alllabel.backend.settings import Settings
from alllabel.backend.state import DirectoryLock, State
from alllabel.backend.status import config_warnings, project_status
from alllabel.backend.webhook_auth import WebhookAuth
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.prelabel.annotators import LLMAnnotator, ProjectionAnnotator
from alllabel.prelabel.prompt import LabelSchema, PromptBuilder

log = logging.getLogger("alllabel")
# Re-exported: gunicorn.conf.py and tests import them from here.
__all__ = ["Orchestrator", "SetupError", "config_warnings", "project_status"]

CHECK_OK_TTL = 60.0  # a successful check of Label Studio's URL and key is trusted this long
CHECK_FAIL_TTL = 3.0  # a failed one is retried after this long
SETUP_LIMIT = 2.9  # seconds a /setup may take (Label Studio waits 3 s)


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
        self._listed: dict[int, float] = {}  # project -> until when its listing of us is trusted
        self._listing: set[int] = set()  # listings in flight (Label Studio calls /setup meanwhile)
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
                self.controllers[pid] = ProjectController(
                    pid, self.state, self.settings, self.services()
                )
            return self.controllers[pid]

    def services(self) -> Services:
        """What a controller uses, passed in (it never reaches back here)."""
        return Services(
            ls=self.ls,
            annotator=self.annotator,
            annotator_name=self.annotator_name,
            batch_poll=self.llm_config.batch_poll,
            sign_webhooks=self.webhook_auth.ensure,
        )

    def basic_auth_header(self) -> str:
        s = self.settings
        return (
            "Basic "
            + base64.b64encode(f"{s.basic_auth_user}:{s.basic_auth_pass or ''}".encode()).decode()
        )

    # --- protocol entry points (fast) ------------------------------------------------------------
    def setup(self, project_key, label_config: str) -> str:
        started = time.monotonic()
        pid = project_id_of(project_key)
        cfg = parse_label_config(label_config)  # UnsupportedConfig -> the caller answers 400
        self.check_label_studio(pid)
        listed = self.connected(pid)
        if listed is None:  # Label Studio's own /setup while we list its ML backends: answer
            return self.settings.model_version
        if not listed:
            # Label Studio validates a new model with a /setup before it lists it: answer that
            # one, and any /setup for a project that did not connect this backend, changing nothing.
            if self.state.project(pid) is not None:
                raise SetupError(
                    f"project {pid} lists no ML backend titled {self.settings.model_version!r} "
                    "or at ALLABEL_BACKEND_URL: not worked on"
                )
            log.info("project %d: /setup, but the project does not list this backend: ignored", pid)
            return self.settings.model_version
        # The queue may take connect_wait after the listing, within the 3 s Label Studio allows.
        deadline = min(started + SETUP_LIMIT, time.monotonic() + self.settings.connect_wait)
        return self._register(pid, label_config, cfg, deadline)

    def _register(self, pid: int, label_config: str, cfg: TextConfig, deadline: float) -> str:
        known = self.state.project(pid)
        if known is None or known["label_config"] != label_config:
            self.state.register(pid, label_config)
            warning = config_warning(cfg)
            if warning:
                log.warning("project %d: %s", pid, warning)
        c = self.controller(pid)
        if known is None or known["label_config"] != label_config:
            c.wake(probe=True, full=known is not None)
        # LS creates the webhook between the two /setup calls of a connect: sign it at once.
        self.webhook_auth.request_check(pid, unsigned_only=True)
        if known is None:  # annotators get the ALLabel order from the first task
            c.planned.wait(max(0.0, deadline - time.monotonic()))
        return self.settings.model_version

    def connected(self, pid: int) -> bool | None:
        """The project lists an ML backend titled ALLABEL_MODEL_VERSION (or at our URL). Listing
        makes Label Studio call /setup on it: that nested call answers at once (in flight)."""
        with self._lock:
            if self._listed.get(pid, 0.0) > time.monotonic():
                return True
            if pid in self._listing:
                return None
            self._listing.add(pid)
        try:
            found = self.ls().ml_backends_quick(pid, timeout=2.5)
        finally:
            with self._lock:
                self._listing.discard(pid)
        titles = tuple(m.get("title") or "" for m in found)
        urls = tuple((m.get("url") or "").rstrip("/") for m in found)
        if backend_listed(titles, urls, self.settings):
            self._listed[pid] = time.monotonic() + CHECK_OK_TTL
            return True
        return False

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
        if c is not None and c.blocker:  # shown on the model's card in Label Studio
            raise SetupError(f"pre-annotation is blocked: {c.blocker}")
        if c is not None and c.memory.hold is not None and c.memory.hold.kind == "min_live_f1":
            raise SetupError(c.memory.hold.reason)

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
            for a in anns[:MAX_CLAIMS_PER_EVENT]:  # a forged event costs a bounded number of reads
                if not isinstance(a, dict):
                    continue
                task = a.get("task")
                task_id = task.get("id") if isinstance(task, dict) else task
                if isinstance(a.get("id"), int) and isinstance(task_id, int):
                    claims.append((a["id"], task_id))
            if not claims:
                return {"status": "ignored", "reason": "annotation without id or task"}
            # Nothing counts before Label Studio confirms it: the controller reads each claim back
            # (one GET), then refills the reserve (which already holds the annotator's next task).
            self.state.claim_annotations(pid, claims)
            c.wake()
            if len(anns) > MAX_CLAIMS_PER_EVENT:
                n = len(anns) - MAX_CLAIMS_PER_EVENT
                return {"status": "ok", "action": action, "ignored_claims": n}
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
            else "offline (no LLM configured: projection for spans, demonstration vote for choices)"
        )

    def annotator(self, cfg: NERConfig):
        """The annotator of the config's <Labels> and <Choices> groups, all in one call per task
        (LLM, else offline: projection for spans, the demonstrations' vote for choices)."""
        descriptions = {
            **dict(cfg.descriptions),
            **{k: v for k, v in self.settings.label_descriptions.items() if k in cfg.labels},
        }
        schema = LabelSchema(list(cfg.labels), descriptions, cfg.choice_groups())
        if not self._uses_llm():
            log.warning(
                "no LLM configured (OPENAI_API_KEY / OPENAI_BASE_URL): using the offline projection annotator"
            )
            return ProjectionAnnotator(schema)
        return LLMAnnotator(self._llm_client(), schema, PromptBuilder(schema, **self._wording()))

    def _wording(self) -> dict:
        """ALLABEL_PROMPT_ROLE / ALLABEL_PROMPT_TASK where set."""
        s = self.settings
        return {k: v for k, v in (("role", s.prompt_role), ("task", s.prompt_task)) if v}

    def _llm_client(self) -> LLMClient:
        with self._lock:
            if self._llm is None:
                self._llm = LLMClient(
                    self.llm_config, LLMCache(self.settings.state_dir / "llm_cache.sqlite3")
                )
        return self._llm

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
            out["llm_usage"] = self._llm.report()
        if self._ls is not None:
            out["label_studio_requests"] = self._ls.requests
        return out

    def project_status(self, pid: int) -> dict:
        return project_status(self.state, pid, self.controllers.get(pid))

    def prelabel_now(self, pid: int, timeout: float | None = None) -> dict:
        """Pre-annotate a project now, whatever its budget (the CLI's ``prelabel --project``): wait
        for one run to finish and its predictions to reach Label Studio."""
        config = self.ls().project(pid)["label_config"]
        self.check_label_studio(pid)
        deadline = time.monotonic() + self.settings.connect_wait
        self._register(pid, config, parse_label_config(config), deadline)  # the admin's own command
        c = self.controller(pid)
        before = c.runs_finished
        c.prelabel_now()
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
