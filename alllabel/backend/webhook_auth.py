"""Signed webhooks: Label Studio's webhook for this backend carries a per-project secret header.

Label Studio creates the project's webhook (``<backend>/webhook``) without credentials when the
backend is connected. The controller's probe calls ``ensure``: it finds the backend's webhooks and
sets our header on them (and basic auth's ``Authorization`` when configured). A webhook that lacks
the current secret was created (or edited) by someone else since: the secret is **rotated** and
every webhook of ours gets the new one, so a secret read from an old webhook stops working.

``/webhook`` calls without the project's secret are refused (401), except START_TRAINING, which
Label Studio sends through its ML client (``POST /api/ml/ID/train``) with the model's basic auth and
never with webhook headers: it is accepted when basic auth passed, or, without basic auth, from
loopback (the only place such a backend serves). A refused call asks for a check of the project's
webhook (at most every ``RECHECK`` seconds), so a re-created webhook is signed again at its first
event (which the periodic sync still counts); so does /setup while the webhook is not signed yet.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from alllabel.backend.ls_client import LabelStudioAPI
from alllabel.backend.security import register_secret

log = logging.getLogger(__name__)

HEADER = "X-ALLabel-Webhook-Secret"
UNSIGNED_ACTIONS = ("START_TRAINING",)  # sent by Label Studio's ML client, never with our header
RECHECK = 10.0  # a signed project's webhook is re-read at most this often on request
PENDING_RECHECK = 1.0  # ... and one not signed yet (just connected) this often


def project_of(payload: dict) -> int | None:
    """The project id of a webhook payload (an object with an id, or the id itself)."""
    project = payload.get("project")
    pid = project.get("id") if isinstance(project, dict) else project
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


class WebhookAuth:
    """The per-project secrets (files of mode 0600 in ``<state_dir>/webhook-secrets``)."""

    def __init__(
        self,
        state_dir: Path,
        basic_auth_header: str | None,
        known: Callable[[int], bool],
        wake: Callable[[int], None],
    ):
        self.dir = Path(state_dir) / "webhook-secrets"
        self.basic_auth_header = basic_auth_header
        self._known, self._wake = known, wake
        self._lock = threading.Lock()
        self._secrets: dict[int, str] = {}
        self._signed: set[int] = set()  # projects whose webhooks carried our headers when last read
        self._wanted: set[int] = set()  # projects whose webhooks should be read again
        self._checked: dict[int, float] = {}
        self._timers: dict[int, threading.Timer] = {}
        self._woken: dict[int, float] = {}
        self.accepted = self.refused = 0

    # --- secrets ---------------------------------------------------------------------------------
    def secret(self, pid: int) -> str | None:
        with self._lock:
            if pid in self._secrets:
                return self._secrets[pid]
        try:
            value = (self.dir / str(pid)).read_text().strip()
        except FileNotFoundError:
            return None
        register_secret(value)
        with self._lock:
            self._secrets[pid] = value
        return value

    def rotate(self, pid: int) -> str:
        """A new secret for the project, on disk before any webhook carries it."""
        value = secrets.token_urlsafe(32)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.dir / f".{pid}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        os.replace(tmp, self.dir / str(pid))
        register_secret(value)
        with self._lock:
            self._secrets[pid] = value
        return value

    def headers(self, secret: str) -> dict[str, str]:
        out = {HEADER: secret}
        if self.basic_auth_header:
            out["Authorization"] = self.basic_auth_header
        return out

    # --- incoming calls --------------------------------------------------------------------------
    def allows(self, payload: dict, header: str | None) -> bool:
        """May this /webhook call act? (Basic auth, when configured, was checked before.)"""
        if payload.get("action") in UNSIGNED_ACTIONS:
            return True
        pid = project_of(payload)
        known = pid is not None and self._known(pid)
        secret = self.secret(pid) if known else None
        ok = bool(secret and header) and hmac.compare_digest(header.encode(), secret.encode())
        with self._lock:
            if ok:
                self.accepted += 1
            else:
                self.refused += 1
        if not ok and known:
            self.request_check(pid)  # maybe Label Studio re-created the webhook: sign it again
        return ok

    def request_check(self, pid: int, unsigned_only: bool = False) -> None:
        """Read the project's webhooks again at the controller's next step, at most once per
        window: a request inside the window is served when it ends (a flood costs one read).
        ``unsigned_only``: only if they were not signed yet (LS calls /setup on every /next)."""
        with self._lock:
            if unsigned_only and pid in self._signed:
                return
            self._wanted.add(pid)
            if pid in self._timers:
                return
            wait = self._wait(pid, self._woken)
            if wait > 0:
                timer = threading.Timer(wait, self._fire, (pid,))
                timer.daemon = True
                self._timers[pid] = timer
                timer.start()
                return
            self._woken[pid] = time.monotonic()
        self._wake(pid)

    def _fire(self, pid: int) -> None:
        with self._lock:
            self._timers.pop(pid, None)
            self._woken[pid] = time.monotonic()
        self._wake(pid)

    def _wait(self, pid: int, woken: dict[int, float] | None = None) -> float:
        """Seconds until the project's webhooks may be read again (or its controller woken)."""
        window = RECHECK if pid in self._signed else PENDING_RECHECK
        last = max(self._checked.get(pid, -window), (woken or {}).get(pid, -window))
        return last + window - time.monotonic()

    def counts(self) -> dict:
        with self._lock:
            return {"accepted": self.accepted, "refused": self.refused}

    # --- the controller's probe ------------------------------------------------------------------
    def ensure(self, ls: LabelStudioAPI, pid: int, model_version: str) -> bool:
        """Sign the project's webhooks if needed; True if they carry our headers now."""
        with self._lock:
            if pid in self._signed and (pid not in self._wanted or self._wait(pid) > 0):
                return True
            self._wanted.discard(pid)
            self._checked[pid] = time.monotonic()
            self._signed.discard(pid)
        hooks = ls.backend_webhooks(pid, model_version)
        if not hooks:  # Label Studio creates it after the first /setup: the next probe looks again
            return False
        secret = self.secret(pid)
        if secret is None or any((h.get("headers") or {}).get(HEADER) != secret for h in hooks):
            secret = self.rotate(pid)
            log.info("project %d: new webhook secret (the webhook is new or was changed)", pid)
        want = self.headers(secret)
        for h in hooks:
            have = h.get("headers") or {}
            if any(have.get(k) != v for k, v in want.items()):
                ls.set_webhook_headers(h, {**have, **want})
        with self._lock:
            self._signed.add(pid)
        return True
