"""The HTTP protocol surface, through Flask's test client (Label Studio itself: test_e2e_*)."""
import base64

import pytest

from _wsgi import create_app
from alllabel.ls_client import LabelStudioAPI
from alllabel.settings import Settings, parse_budget, parse_ratios, resolve_budget
from model import ALLabelBackend

NER = '<View><Labels name="label" toName="text"><Label value="PER" hint="a person"/><Label value="ORG"/></Labels><Text name="text" value="$text"/></View>'


def make(tmp_path, **kw):
    settings = Settings(state_dir=tmp_path / "state", model_version="alllabel-test", **kw)
    # Nothing listens on port 9: every Label Studio call fails like an unreachable server.
    backend = ALLabelBackend(settings, ls_factory=lambda: LabelStudioAPI("http://127.0.0.1:9", "token"))
    return backend, create_app(backend).test_client()


def test_health_setup_versions(tmp_path):
    backend, client = make(tmp_path)
    assert client.get("/health").json == {"status": "UP", "model_class": "ALLabelBackend", "model_version": "alllabel-test"}
    r = client.post("/setup", json={"project": "7.1700000000", "schema": NER, "hostname": "http://x", "access_token": "t"})
    assert r.status_code == 200 and r.json == {"model_version": "alllabel-test"}
    assert client.get("/versions").json == {"versions": ["alllabel-test"]}


@pytest.mark.parametrize(
    "schema, message",
    [
        ('<View><Choices name="c" toName="text"><Choice value="a"/></Choices><Text name="text" value="$text"/></View>', "no <Labels>"),
        ('<View><Labels name="l" toName="img"><Label value="a"/></Labels><Image name="img" value="$image"/></View>', "<Text>"),
        ("<View><Labels", "not valid XML"),
        ('<View><Labels name="l" toName="text"></Labels><Text name="text" value="$text"/></View>', "no <Label"),
    ],
)
def test_unsupported_configs_get_a_clear_400(tmp_path, schema, message):
    _, client = make(tmp_path)
    r = client.post("/setup", json={"project": "1.1", "schema": schema})
    assert r.status_code == 400 and message in r.json["error"]


def test_predict_is_aligned_and_empty_without_predictions(tmp_path):
    backend, client = make(tmp_path)
    client.post("/setup", json={"project": "3.1", "schema": NER})
    backend.orchestrator.state.add_to_queue(3, [(11, 0, "diversity", 0.0), (12, 1, "similarity", 1e-6)])
    backend.orchestrator.state.save_prelabel(3, 13, [{"from_name": "label", "to_name": "text", "type": "labels", "value": {"start": 0, "end": 3, "text": "Bob", "labels": ["PER"]}}], 0.42, "llm-x", None)
    r = client.post("/predict", json={"tasks": [{"id": 13}, {"id": 99}, {"id": 12}], "project": "3.1", "params": {"context": None}})
    results = r.json["results"]
    assert len(results) == 3 and results[1] == []
    assert results[0]["score"] == 0.42 and results[0]["result"][0]["value"]["labels"] == ["PER"] and results[0]["model_version"] == "alllabel-test"
    assert results[2] == {"result": [], "score": 1e-6, "model_version": "alllabel-test"}
    assert client.post("/predict", json={"tasks": "nope"}).status_code == 400
    assert client.post("/predict", data="not json", content_type="application/json").status_code == 400


def test_webhooks_are_recorded_and_unknown_ones_ignored(tmp_path):
    backend, client = make(tmp_path)
    client.post("/setup", json={"project": "5.1", "schema": NER})
    ann = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 40, "was_cancelled": False}, "project": {"id": 5}}
    assert client.post("/webhook", json=ann).json["status"] == "ok"
    assert backend.orchestrator.state.annotated_tasks(5) == {40}
    client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": 5}})
    assert backend.orchestrator.state.annotated_tasks(5) == set()
    assert client.post("/webhook", json={"action": "LABEL_LINK_CREATED", "project": {"id": 5}}).json["status"] == "ignored"
    assert client.post("/webhook", json={"project": {"id": 5}}).status_code == 400


def test_unreachable_label_studio_is_reported_in_status(tmp_path):
    backend, client = make(tmp_path)
    client.post("/setup", json={"project": "2.1", "schema": NER})
    assert backend.orchestrator.jobs.wait_idle(60)
    (p,) = client.get("/status?project=2").json["projects"]
    assert p["phase"] == "new" and "cannot reach Label Studio at http://127.0.0.1:9" in p["message"]


def test_basic_auth(tmp_path):
    _, client = make(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret")
    assert client.get("/health").status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.get("/health", headers=good).status_code == 200
    assert client.get("/health", headers=bad).status_code == 401


def test_settings_parsing():
    assert parse_budget("50") == 50 and parse_budget("5%") == 0.05 and parse_budget("0.1") == 0.1
    assert resolve_budget(0.05, 658) == 33 and resolve_budget(50, 10) == 10 and resolve_budget(0.001, 10) == 1
    assert parse_ratios("1:3:1") == (1, 3, 1)
    for bad in ("0", "-3", "150%", "lots"):
        with pytest.raises(ValueError, match="ALLABEL_BUDGET"):
            parse_budget(bad)
    with pytest.raises(ValueError, match="ALLABEL_RATIOS"):
        parse_ratios("1:3")


def test_gunicorn_serves_the_app(tmp_path):
    """The production command (the Dockerfile's and scripts/start.sh's) really serves the protocol."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import requests

    from tests.label_studio import free_port

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {**os.environ, "ALLABEL_STATE_DIR": str(tmp_path / "state"), "ALLABEL_MODEL_VERSION": "gunicorn-test"}
    env.pop("BASIC_AUTH_USER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "_wsgi:app"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                health = requests.get(url + "/health", timeout=1).json()
                break
            except requests.RequestException:
                time.sleep(0.2)
        assert health["model_version"] == "gunicorn-test"
        assert requests.post(url + "/setup", json={"project": "1.1", "schema": NER}, timeout=5).json() == {"model_version": "gunicorn-test"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_restart_resumes_prelabeling(tmp_path):
    backend, _ = make(tmp_path)
    state = backend.orchestrator.state
    state.register(4, NER)
    state.update_project(4, phase="prelabeling")
    again, _ = make(tmp_path)  # a new process on the same state directory
    assert again.orchestrator.jobs.wait_idle(60)
    assert again.orchestrator.state.project(4)["message"].startswith("prelabel failed: cannot reach Label Studio")
