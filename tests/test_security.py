"""Who may reach the backend: bind rule, credentials, webhook secrets, body limit, errors, secrets.

The HTTP surface runs through Flask's test client; Label Studio's side is in test_e2e_label_studio
(signed webhooks) and gunicorn's in test_backend_protocol (refusing to start)."""

import base64
import io
import logging
import stat
import time

import pytest

from _wsgi import create_app
from alllabel.backend.ls_client import LabelStudioAPI
from alllabel.backend.security import (
    RedactSecrets,
    check_credentials,
    install_log_redaction,
    loopback_peer,
    refusal,
    register_secret,
)
from alllabel.backend.settings import Settings
from alllabel.backend.webhook_auth import HEADER, PENDING_RECHECK, WebhookAuth
from model import ALLabelBackend
from scripts.local_studio import base_env, ls_env

NER = '<View><Labels name="label" toName="text"><Label value="PER"/></Labels><Text name="text" value="$text"/></View>'


def make(tmp_path, **kw):
    settings = Settings(state_dir=tmp_path / "state", model_version="sec-test", **kw)
    backend = ALLabelBackend(
        settings, ls_factory=lambda: LabelStudioAPI("http://127.0.0.1:9", "token")
    )
    return backend, create_app(backend).test_client()


def annotation(pid, aid=1, task=40):
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": aid, "task": task, "was_cancelled": False},
        "project": {"id": pid},
    }


def test_refusal_names_the_variables_beyond_loopback_only():
    for local in ("127.0.0.1:9090", "unix:/run/a.sock,[::1]:9090,localhost:9090"):
        assert refusal(local, None, None) is None
    for exposed in ("0.0.0.0:9090", "127.0.0.1:9090,[::]:9090", "10.1.2.3:9090"):
        why = refusal(exposed, None, None)
        assert "BASIC_AUTH_USER and BASIC_AUTH_PASS" in why and exposed.split(",")[-1] in why
        assert refusal(exposed, "ls", None) is not None  # a user alone opens nothing
        assert refusal(exposed, "ls", "s3cret") is None


def test_a_user_without_a_password_is_an_error(tmp_path, monkeypatch):
    check_credentials(None, None)
    check_credentials("ls", "pw")
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS is not set"):
        check_credentials("ls", "")
    with pytest.raises(ValueError, match="BASIC_AUTH_USER is not set"):
        check_credentials(None, "pw")
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS"):
        Settings.from_env()
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS"):
        make(tmp_path, basic_auth_user="ls")


def test_without_credentials_only_loopback_peers_are_served(tmp_path):
    assert loopback_peer("127.0.0.1") and loopback_peer("::1") and loopback_peer("::ffff:127.0.0.1")
    assert loopback_peer(None) and not loopback_peer("10.0.0.5") and not loopback_peer("junk")
    _, client = make(tmp_path)
    assert client.get("/health").status_code == 200
    r = client.get("/status", environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert r.status_code == 403 and "BASIC_AUTH_USER and BASIC_AUTH_PASS" in r.json["error"]
    _, client = make(tmp_path / "b", basic_auth_user="ls", basic_auth_pass="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    remote = {"REMOTE_ADDR": "10.0.0.5"}
    for path in ("/status", "/health", "/versions", "/"):
        assert client.get(path, environ_base=remote).status_code == 401
        assert client.get(path, environ_base=remote, headers=good).status_code == 200
    assert client.post("/predict", json={"tasks": []}).status_code == 401
    empty = {"Authorization": "Basic " + base64.b64encode(b"ls:").decode()}
    assert client.get("/status", headers=empty).status_code == 401


def test_webhooks_need_the_projects_secret_except_start_training(tmp_path):
    backend, client = make(tmp_path)
    orch = backend.orchestrator
    orch.state.register(5, NER)
    orch.state.register(6, NER)
    secret = orch.webhook_auth.rotate(5)
    other = orch.webhook_auth.rotate(6)
    for headers in ({}, {HEADER: "guess"}, {HEADER: other}):  # another project's secret too
        r = client.post("/webhook", json=annotation(5), headers=headers)
        assert r.status_code == 401 and HEADER in r.json["error"]
    assert orch.state.claims(5) == []  # refused calls change nothing
    r = client.post("/webhook", json=annotation(5), headers={HEADER: secret})
    assert r.status_code == 200 and [c[:2] for c in orch.state.claims(5)] == [(1, 40)]
    # A project this backend never signed has no secret: nothing is accepted for it.
    assert client.post("/webhook", json=annotation(7), headers={HEADER: secret}).status_code == 401
    start = {"action": "START_TRAINING", "project": {"id": 5}}
    assert client.post("/webhook", json=start).json == {"status": "ok", "action": "START_TRAINING"}
    assert orch.status()["webhooks"] == {"accepted": 1, "refused": 4}


def test_start_training_needs_basic_auth_when_it_is_configured(tmp_path):
    backend, client = make(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret")
    backend.orchestrator.state.register(5, NER)
    start = {"action": "START_TRAINING", "project": {"id": 5}}
    assert client.post("/webhook", json=start).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert client.post("/webhook", json=start, headers=good).status_code == 200
    # Basic auth alone is not enough for annotation events: they need the webhook's secret.
    assert client.post("/webhook", json=annotation(5), headers=good).status_code == 401


def test_secrets_are_files_of_mode_0600_and_survive_a_restart(tmp_path):
    woken = []
    auth = WebhookAuth(tmp_path, None, known=lambda pid: pid == 3, wake=woken.append)
    assert auth.secret(3) is None
    first = auth.rotate(3)
    path = tmp_path / "webhook-secrets" / "3"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = WebhookAuth(tmp_path, None, known=lambda pid: True, wake=woken.append)
    assert again.secret(3) == first and again.rotate(3) != first and len(first) >= 40
    assert auth.headers("s") == {HEADER: "s"}
    assert WebhookAuth(tmp_path, "Basic x", bool, bool).headers("s")["Authorization"] == "Basic x"


def test_refused_calls_ask_for_a_check_of_known_projects_only_and_rate_limited(tmp_path):
    woken = []
    auth = WebhookAuth(tmp_path, None, known=lambda pid: pid == 3, wake=woken.append)
    for _ in range(5):
        assert not auth.allows(annotation(3), None)
        assert not auth.allows(annotation(99), None)  # unknown: no check, no controller
    assert woken == [3]  # at once, then nothing until the window is over ...
    time.sleep(PENDING_RECHECK + 0.3)
    assert woken == [3, 3]  # ... when the requests made inside it are served, once


def test_413_for_a_body_over_the_limit(tmp_path):
    backend, client = make(tmp_path, max_body_mb=0.01)  # 10 KiB
    backend.orchestrator.state.register(5, NER)
    big = {**annotation(5), "pad": "x" * 20_000}
    for path in ("/webhook", "/setup", "/predict"):
        assert client.post(path, json=big).status_code == 413
    assert backend.orchestrator.state.claims(5) == []
    _, client = make(tmp_path / "default")
    assert client.application.config["MAX_CONTENT_LENGTH"] == 64 * 2**20


def test_a_500_carries_an_error_id_and_the_log_the_exception(tmp_path, caplog):
    backend, client = make(tmp_path)
    backend.orchestrator.state.close()  # a real failure: the state database is gone
    r = client.get("/status")
    assert r.status_code == 500
    error_id = r.json["error_id"]
    assert len(error_id) == 12 and error_id in r.json["error"] and "log" in r.json["error"]
    assert "closed" not in r.text.lower() and "Error" not in r.text  # no exception text
    (record,) = [x for x in caplog.records if error_id in x.getMessage()]
    assert record.exc_info and "closed" in str(record.exc_info[1]).lower()


def test_secrets_never_reach_a_log_line(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef123456")
    monkeypatch.setenv("BASIC_AUTH_PASS", "hunter2-pass")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls:in-url-secret@ls.example:8080")
    out = io.StringIO()
    logger = logging.getLogger("test-redaction")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_redaction(logger)
        install_log_redaction(logger)  # once is enough
        assert sum(isinstance(f, RedactSecrets) for f in handler.filters) == 1
        secret = "w" * 10
        register_secret(secret)  # as a new webhook secret is
        logger.warning("key %s and pass %s and webhook %s", "sk-live-abcdef123456", "x", secret)
        logger.error("cannot reach %s", "http://ls:in-url-secret@ls.example:8080")
        try:
            raise RuntimeError("the endpoint said: bad key sk-live-abcdef123456 (hunter2-pass)")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "sk-live" not in text and "hunter2" not in text and secret not in text
    assert "in-url-secret" not in text and "http://ls:[redacted]@ls.example" in text
    assert text.count("[redacted]") >= 4 and "call failed" in text


def test_label_studio_gets_none_of_our_secrets(tmp_path, monkeypatch):
    for name, value in {
        "OPENAI_API_KEY": "sk-1",
        "OPENAI_BASE_URL": "http://llm",
        "LABEL_STUDIO_API_KEY": "k",
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "PASSWORD": "shell-password",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "LC_ALL": "C.UTF-8",
    }.items():
        monkeypatch.setenv(name, value)
    env = ls_env(tmp_path, 8080, username="a@b.c", password="pw", token="t" * 40)
    leaked = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER"}
    leaked |= {"BASIC_AUTH_PASS", "PASSWORD", "AWS_SECRET_ACCESS_KEY"}
    assert not leaked & set(env) and "sk-1" not in env.values()
    assert env["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["LABEL_STUDIO_PASSWORD"] == "pw"
    assert not leaked & set(base_env()) and base_env()["PATH"]  # PostgreSQL's environment
