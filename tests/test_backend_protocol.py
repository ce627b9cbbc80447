"""The HTTP protocol surface, through Flask's test client (Label Studio itself: test_e2e_*)."""

import base64
import time

import pytest

from _wsgi import create_app
from alllabel.backend.ls_client import LabelStudioAPI
from alllabel.backend.settings import Settings, parse_budget, parse_ratios, resolve_budget
from alllabel.backend.webhook_auth import HEADER
from model import ALLabelBackend

NER = '<View><Labels name="label" toName="text"><Label value="PER" hint="a person"/><Label value="ORG"/></Labels><Text name="text" value="$text"/></View>'


def make(tmp_path, **kw):
    settings = Settings(state_dir=tmp_path / "state", model_version="alllabel-test", **kw)
    # Nothing listens on port 9: every Label Studio call fails like an unreachable server.
    backend = ALLabelBackend(
        settings, ls_factory=lambda: LabelStudioAPI("http://127.0.0.1:9", "token")
    )
    return backend, create_app(backend).test_client()


def test_health_setup_versions(tmp_path):
    backend, client = make(tmp_path)
    assert client.get("/health").json == {
        "status": "UP",
        "model_class": "ALLabelBackend",
        "model_version": "alllabel-test",
    }
    assert client.get("/versions").json == {"versions": ["alllabel-test"]}


def test_setup_says_why_it_cannot_work_in_the_status_line(tmp_path, caplog):
    """Label Studio shows only the status line of a failed /setup: the reason must be there."""
    _, client = make(tmp_path)
    r = client.post(
        "/setup",
        json={
            "project": "7.1700000000",
            "schema": NER,
            "hostname": "http://x",
            "access_token": "t",
        },
    )
    assert r.status_code == 502 and "cannot reach Label Studio at http://127.0.0.1:9" in r.status
    assert (
        "check LABEL_STUDIO_URL" in r.status
        and "\n" not in r.status
        and r.json["error"].startswith("cannot reach")
    )
    assert "cannot reach Label Studio" in caplog.text  # and in the log


@pytest.mark.parametrize(
    "schema, message",
    [
        (
            '<View><Text name="text" value="$text"/><Audio name="audio" value="$audio"/></View>',
            'the labeling config has <Audio name="audio">: ALLabel works on text projects only',
        ),
        (
            '<View><Labels name="l" toName="img"><Label value="a"/></Labels><Image name="img" value="$image"/></View>',
            '<Image name="img">',
        ),
        ("<View><Labels", "not valid XML"),
        (
            '<View><Labels name="l" toName="text"></Labels><Text name="text" value="$text"/></View>',
            "no <Label",
        ),
    ],
)
def test_unsupported_configs_get_a_clear_400(tmp_path, schema, message, caplog):
    _, client = make(tmp_path)
    r = client.post("/setup", json={"project": "1.1", "schema": schema})
    assert (
        r.status_code == 400
        and message in r.json["error"]
        and message in r.status
        and message in caplog.text
    )


def test_predict_is_aligned_and_never_duplicates_a_push(tmp_path):
    backend, client = make(tmp_path)
    state = backend.orchestrator.state
    state.register(3, NER)
    state.add_to_queue(3, [(11, 0, "diversity"), (12, 1, "similarity")])
    result = [
        {
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": 0, "end": 3, "text": "Bob", "labels": ["PER"]},
        }
    ]
    state.save_prelabel(3, 13, result, 0.42, "llm-x", None, None)
    state.claim_push(3, {11: (None, "d")})  # task 11's queue entry is being pushed right now
    r = client.post(
        "/predict",
        json={
            "tasks": [{"id": 13}, {"id": 99}, {"id": 12}, {"id": 11}],
            "project": "3.1",
            "params": {"context": None},
        },
    )
    results = r.json["results"]
    assert len(results) == 4 and results[1] == [] and results[3] == []
    assert results[0] == {"result": result, "score": 0.42, "model_version": "alllabel-test"}
    assert results[2] == {"result": [], "score": 1e-6, "model_version": "alllabel-test"}
    # Label Studio stores what /predict returns: asked again, we answer nothing rather than a duplicate.
    again = client.post(
        "/predict", json={"tasks": [{"id": 13}, {"id": 12}], "project": "3.1"}
    ).json["results"]
    assert again == [[], []] and state.pending_pushes(3) == {}
    assert client.post("/predict", json={"tasks": "nope"}).status_code == 400
    assert (
        client.post("/predict", data="not json", content_type="application/json").status_code == 400
    )


def test_webhooks_are_claims_and_unknown_ones_ignored(tmp_path):
    backend, client = make(tmp_path)
    state = backend.orchestrator.state
    state.register(5, NER)
    # Signed as the controller signs Label Studio's webhook (test_security: unsigned ones get 401).
    signed = {HEADER: backend.orchestrator.webhook_auth.rotate(5)}
    ann = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 1, "task": 40, "was_cancelled": False},
        "project": {"id": 5},
    }
    assert client.post("/webhook", json=ann, headers=signed).json["status"] == "ok"
    assert [c[:2] for c in state.claims(5)] == [(1, 40)] and state.annotated_tasks(
        5
    ) == set()  # not counted until confirmed
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [{"id": 2, "task": 41}, {"id": 3, "task": {"id": 42}}],
        "project": {"id": 5},
    }
    assert client.post("/webhook", json=bulk, headers=signed).json["status"] == "ok"
    assert sorted(c[:2] for c in state.claims(5)) == [(1, 40), (2, 41), (3, 42)]
    assert (
        client.post(
            "/webhook", json={"action": "LABEL_LINK_CREATED", "project": {"id": 5}}, headers=signed
        ).json["status"]
        == "ignored"
    )
    assert (
        client.post("/webhook", json={**ann, "project": {"id": 6}}, headers=signed).status_code
        == 401
    )  # not connected here: no secret
    assert client.post("/webhook", json={"project": {"id": 5}}, headers=signed).status_code == 400


def test_one_event_carries_at_most_1000_claims(tmp_path):
    backend, client = make(tmp_path)
    state = backend.orchestrator.state
    state.register(5, NER)
    many = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [{"id": n, "task": 40} for n in range(1, 1201)] + ["junk"],
        "project": {"id": 5},
    }
    signed = {HEADER: backend.orchestrator.webhook_auth.rotate(5)}
    reply = client.post("/webhook", json=many, headers=signed).json
    assert reply["status"] == "ok" and reply["ignored_claims"] == 201
    assert len(state.claims(5)) == 1000 and state.annotated_tasks(5) == set()


def test_labels_plus_other_controls_is_accepted_with_a_warning(tmp_path):
    from alllabel.backend.orchestrator import config_warnings

    mixed = NER.replace("</View>", '<TextArea name="quality" toName="text"/></View>')
    (warning,) = config_warnings(mixed)
    assert warning.startswith(
        '<Labels name="label"> is pre-annotated; <TextArea name="quality"> left to annotators'
    )
    assert config_warnings(NER) == []


def test_basic_auth(tmp_path):
    _, client = make(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret")
    assert client.get("/health").status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.get("/health", headers=good).status_code == 200
    assert client.get("/health", headers=bad).status_code == 401


def test_settings_parsing():
    assert parse_budget("50") == 50 and parse_budget("5%") == 0.05 and parse_budget("0.1") == 0.1
    assert (
        resolve_budget(0.05, 658) == 33
        and resolve_budget(50, 10) == 10
        and resolve_budget(0.001, 10) == 1
    )
    assert parse_ratios("1:3:1") == (1, 3, 1)
    for bad in ("0", "-3", "150%", "lots"):
        with pytest.raises(ValueError, match="ALLABEL_BUDGET"):
            parse_budget(bad)
    with pytest.raises(ValueError, match="ALLABEL_RATIOS"):
        parse_ratios("1:3")


def _gunicorn(tmp_path, bind: str, **env_extra):
    """The production command (the Dockerfile's and scripts/start.sh's) on ``bind``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "ALLABEL_STATE_DIR": str(tmp_path / "state"),
        "ALLABEL_MODEL_VERSION": "gunicorn-test",
    }
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        env.pop(name, None)
    env.update(env_extra)
    log = tmp_path / "gunicorn.log"
    argv = ["--bind", bind, "--workers", "1", "--threads", "4", "_wsgi:app"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *argv],
        cwd=root,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def test_gunicorn_refuses_to_listen_beyond_loopback_without_credentials(tmp_path):
    from tests.label_studio import free_port

    for extra in ({}, {"BASIC_AUTH_USER": "ls"}, {"BASIC_AUTH_PASS": "s3cret"}):
        proc, log = _gunicorn(tmp_path, f"0.0.0.0:{free_port()}", **extra)
        try:
            assert proc.wait(60) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        text = log.read_text()
        assert "BASIC_AUTH_USER" in text and "BASIC_AUTH_PASS" in text, text
        assert "Booting worker" not in text  # it never served anything


def test_gunicorn_serves_the_app(tmp_path):
    """With both credentials gunicorn listens beyond loopback (tested through 127.0.0.1) and
    answers nothing without them; bodies over ALLABEL_MAX_BODY_MB get 413."""
    import requests

    from tests.label_studio import free_port

    port = free_port()
    proc, log = _gunicorn(
        tmp_path,
        f"0.0.0.0:{port}",
        BASIC_AUTH_USER="ls",
        BASIC_AUTH_PASS="s3cret",
        ALLABEL_MAX_BODY_MB="1",
    )
    auth = ("ls", "s3cret")
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                health = requests.get(url + "/health", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        assert health.status_code == 401
        for path in ("/health", "/status", "/versions"):
            assert requests.get(url + path, timeout=5).status_code == 401
        assert requests.post(url + "/predict", json={"tasks": []}, timeout=5).status_code == 401
        health = requests.get(url + "/health", auth=auth, timeout=5).json()
        assert health["model_version"] == "gunicorn-test"
        r = requests.post(
            url + "/setup", json={"project": "1.1", "schema": NER}, auth=auth, timeout=5
        )
        assert (
            r.status_code == 502
            and "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set" in r.reason
        )
        big = {"action": "TASKS_CREATED", "project": {"id": 1}, "pad": "x" * 2**21}
        assert requests.post(url + "/webhook", json=big, auth=auth, timeout=30).status_code == 413
    finally:
        proc.terminate()
        proc.wait(10)
    assert "s3cret" not in log.read_text()


def test_restart_resumes_and_reports_what_blocks_it(tmp_path):
    backend, _ = make(tmp_path)
    state = backend.orchestrator.state
    state.register(4, NER)
    state.update_project(4, phase="prelabeling")
    backend.orchestrator.close()
    again, client = make(tmp_path)  # a new process on the same state directory picks the project up
    deadline = time.time() + 30
    while time.time() < deadline and not (
        client.get("/status?project=4").json["projects"][0]["message"] or ""
    ).startswith("cannot reach"):
        time.sleep(0.1)
    (p,) = client.get("/status?project=4").json["projects"]
    assert p["phase"] == "prelabeling" and p["message"].startswith(
        "cannot reach Label Studio at http://127.0.0.1:9"
    )
    assert "retrying in" in p["message"]  # it keeps trying by itself
