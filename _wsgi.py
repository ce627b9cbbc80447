"""WSGI app speaking the Label Studio ML backend protocol: ``gunicorn _wsgi:app``.

GET /health, POST /setup, POST /predict, POST /webhook, GET /versions, and GET /status
(our progress report). Optional HTTP basic auth (BASIC_AUTH_USER / BASIC_AUTH_PASS).
"""

from __future__ import annotations

import hmac
import logging
import os

from flask import Flask, jsonify, request

from alllabel.backend.label_config import UnsupportedConfig
from alllabel.backend.orchestrator import SetupError
from model import ALLabelBackend

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO"),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
log = logging.getLogger("alllabel.wsgi")


def create_app(backend: ALLabelBackend | None = None) -> Flask:
    backend = backend or ALLabelBackend()
    settings = backend.orchestrator.settings
    app = Flask("alllabel")
    app.config["backend"] = backend

    @app.before_request
    def _auth():
        user = settings.basic_auth_user
        if not user:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and hmac.compare_digest(auth.username or "", user)
            and hmac.compare_digest(auth.password or "", settings.basic_auth_pass or "")
        )
        if not ok:
            return (
                jsonify(error="authentication required"),
                401,
                {"WWW-Authenticate": 'Basic realm="alllabel"'},
            )
        return None

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data

    @app.errorhandler(Exception)
    def _error(e):
        if isinstance(e, (UnsupportedConfig, SetupError)):
            # Label Studio shows only the status line of a failed /setup (not the body): say it there.
            code = 400 if isinstance(e, UnsupportedConfig) else 502
            log.error("%s %s: %s", request.method, request.path, e)
            r = jsonify(error=str(e))
            r.status = f"{code} {status_phrase(str(e))}"
            return r
        if isinstance(e, BadRequest):
            return jsonify(error=str(e)), 400
        status = getattr(e, "code", None)
        if isinstance(status, int) and 400 <= status < 500:
            return jsonify(error=str(e)), status
        log.exception("request failed")
        return jsonify(error=f"{type(e).__name__}: {e}"), 500

    @app.get("/")
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
        return jsonify(backend.fit(data["action"], data)), 200

    @app.get("/versions")
    def versions():
        return jsonify(versions=[backend.model_version])

    @app.get("/status")
    def status():
        project = request.args.get("project", type=int)
        return jsonify(backend.status(project))

    return app


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
