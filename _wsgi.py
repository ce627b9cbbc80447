"""WSGI app speaking the Label Studio ML backend protocol: ``gunicorn _wsgi:app``.

GET /health, POST /setup, POST /predict, POST /webhook, GET /versions, GET /status (our progress
report, JSON) and GET / (the same as an HTML page for people). Who may call what: the README's threat model. In short: HTTP basic auth
(BASIC_AUTH_USER and BASIC_AUTH_PASS) on every endpoint, required beyond loopback; /webhook also
needs the project's webhook secret (``webhook_auth``); bodies are limited (413).
"""

from __future__ import annotations

import hmac
import logging
import os
import uuid

from flask import Flask, Response, jsonify, request

from alllabel.backend.label_config import UnsupportedConfig
from alllabel.backend.orchestrator import SetupError
from alllabel.backend.page import render as render_page
from alllabel.backend.security import (
    CREDENTIALS,
    check_credentials,
    install_log_redaction,
    loopback_peer,
    redact,
)
from alllabel.backend.settings import Settings
from alllabel.backend.webhook_auth import HEADER
from model import ALLabelBackend

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO"),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("alllabel.wsgi")
install_log_redaction()


def create_app(backend: ALLabelBackend | None = None) -> Flask:
    backend = backend or ALLabelBackend()
    settings = backend.orchestrator.settings
    check_credentials(settings.basic_auth_user, settings.basic_auth_pass)
    app = Flask("alllabel")
    app.config["backend"] = backend
    # LS's largest bodies are batches of 5,000 tasks or annotations (README, threat model).
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_mb * 2**20)
    app.before_request(lambda: authenticate(settings))
    app.register_error_handler(Exception, answer_error)
    add_routes(app, backend)
    return app


def authenticate(settings: Settings):
    """Every endpoint: basic auth when configured, else loopback clients only (None: go on)."""
    user = settings.basic_auth_user
    if not user:
        if loopback_peer(request.remote_addr):
            return None
        # Without credentials the backend is for this machine only (gunicorn also refuses).
        return jsonify(error=f"this backend serves loopback only unless {CREDENTIALS} are set"), 403
    auth = request.authorization
    ok = (
        auth is not None
        and hmac.compare_digest((auth.username or "").encode(), user.encode())
        and hmac.compare_digest(
            (auth.password or "").encode(), (settings.basic_auth_pass or "").encode()
        )
    )
    if not ok:
        return (
            jsonify(error="authentication required"),
            401,
            {"WWW-Authenticate": 'Basic realm="alllabel"'},
        )
    return None


def answer_error(e: Exception):
    if isinstance(e, (UnsupportedConfig, SetupError)):
        # Label Studio shows only the status line of a failed /setup (not the body): say it there.
        code = 400 if isinstance(e, UnsupportedConfig) else 502
        log.error("%s %s: %s", request.method, request.path, e)
        message = redact(str(e))
        r = jsonify(error=message)
        r.status = f"{code} {status_phrase(message)}"
        return r
    if isinstance(e, BadRequest):
        return jsonify(error=str(e)), 400
    status = getattr(e, "code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return jsonify(error=str(e)), status
    # The exception may name paths, URLs or data: the log gets it, the caller an id to find it.
    error_id = uuid.uuid4().hex[:12]
    log.exception("%s %s failed (error id %s)", request.method, request.path, error_id)
    hint = f"internal error; the backend's log has the details under error id {error_id}"
    return jsonify(error=hint, error_id=error_id), 500


def body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def add_routes(app: Flask, backend: ALLabelBackend) -> None:
    @app.get("/")
    def page():
        # The status page for people; Label Studio reads /health.
        r = Response(render_page(backend.status(None)), mimetype="text/html")
        # Nothing runs or loads from elsewhere, even if escaping were ever missed.
        r.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        return r

    @app.get("/health")
    def health():
        return jsonify(
            status="UP", model_class="ALLabelBackend", model_version=backend.model_version
        )

    @app.post("/setup")
    def setup():
        data = body()
        if "project" not in data or "schema" not in data:
            raise BadRequest('/setup needs "project" and "schema" (the labeling config)')
        return jsonify(model_version=backend.setup(data["project"], data["schema"]))

    @app.post("/predict")
    def predict():
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest('/predict needs "tasks": a list of task objects')
        params = data.get("params") or {}
        results = backend.predict(tasks, context=params.get("context"), project=data.get("project"))
        return jsonify(results=results, model_version=backend.model_version)

    @app.post("/webhook")
    def webhook():
        data = body()
        if not data.get("action"):
            raise BadRequest('webhook payload has no "action"')
        if not backend.orchestrator.webhook_auth.allows(data, request.headers.get(HEADER)):
            # Unsigned: forged, or sent before the controller signed a new webhook (the periodic
            # sync still reads every annotation from Label Studio).
            return jsonify(error=f"webhook without this project's {HEADER} header"), 401
        return jsonify(backend.fit(data["action"], data)), 200

    @app.get("/versions")
    def versions():
        return jsonify(versions=[backend.model_version])

    @app.get("/status")
    def status():
        project = request.args.get("project", type=int)
        return jsonify(backend.status(project))


class BadRequest(ValueError):
    pass


def status_phrase(message: str, limit: int = 400) -> str:
    """A message made safe for an HTTP status line: one line of latin-1, bounded."""
    one = " ".join(message.split())
    one = one.encode("latin-1", "replace").decode("latin-1")
    return one if len(one) <= limit else one[: limit - 3] + "..."


def __getattr__(name: str):
    # gunicorn reads `_wsgi:app`; build it on first access so importing this module has no side effects.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
