"""What events and /setup calls may change, against a real Label Studio 1.23 (issues 14-15):
claims change nothing until Label Studio confirms them, /setup acts only on a project that
connected this backend, and a project whose model is removed stops being worked on."""

import pytest
import requests

from alllabel.backend.webhook_auth import HEADER
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_label_studio import CONFIG, LS, Backend, oracle, webhook_secret


@pytest.fixture(scope="module")
def ls(label_studio):
    return label_studio


def test_a_forged_bulk_event_changes_no_queue_entry(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[200:240]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("forged bulk", records)
            assert api.connect(pid, b.url).status_code == 201
            b.idle(pid)
            queue = b.orch.state.queue(pid)
            held = sorted((p.task, p.score) for p in api.predictions(pid))
            claimed = list(rec_of)[:40]  # real tasks, annotations nobody made
            forged = {
                "action": "ANNOTATIONS_CREATED",
                "project": {"id": pid},
                "annotation": [{"id": 880000 + n, "task": t} for n, t in enumerate(claimed)],
            }
            # Unsigned, it is refused; signed as Label Studio's webhook is (a leaked secret), it is
            # only a claim, which Label Studio never confirms.
            assert requests.post(f"{b.url}/webhook", json=forged).status_code == 401
            signed = {HEADER: webhook_secret(api, pid, b)}
            reply = requests.post(f"{b.url}/webhook", json=forged, headers=signed)
            assert reply.json()["status"] == "ok"
            b.wait_for(pid, lambda st: st["unconfirmed_claims"] == 0, timeout=30, what="checked")
            b.idle(pid)
            assert b.orch.state.queue(pid) == queue
            assert sorted((p.task, p.score) for p in api.predictions(pid)) == held
            st = b.status(pid)
            assert st["annotated_tasks"] == 0 and st["phase"] == "planned" and fake.requests == []
            # An event may carry at most 1,000 claims: the rest is ignored, and the reply says so.
            many = {
                **forged,
                "annotation": [{"id": 870000 + n, "task": claimed[0]} for n in range(1200)],
            }
            reply = requests.post(f"{b.url}/webhook", json=many, headers=signed).json()
            assert reply["ignored_claims"] == 200 and b.status(pid)["unconfirmed_claims"] <= 1000
        finally:
            b.stop()


def test_setup_for_a_project_that_did_not_connect_changes_nothing(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[240:260]
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, _ = api.new_project("not connected", records)
            before = api.project(pid)
            body = {"project": f"{pid}.1700000000", "schema": CONFIG}
            r = requests.post(f"{b.url}/setup", json=body)
            assert r.status_code == 200
            after = api.project(pid)
            for key in ("sampling", "model_version", "show_collab_predictions"):
                assert after[key] == before[key], key
            assert api.get("/api/dm/views/", project=pid) == []
            assert api.predictions(pid) == []
            assert b.orch.state.project(pid) is None and pid not in b.orch.controllers
        finally:
            b.stop()


def test_a_project_whose_model_is_removed_is_no_longer_worked_on(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[260:290]
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, _ = api.new_project("model removed", records)
            assert api.connect(pid, b.url).status_code == 201
            b.idle(pid)
            for ml in api.get("/api/ml/", project=pid):
                assert api.send("DELETE", f"/api/ml/{ml['id']}").status_code == 204
            st = b.wait_for(pid, lambda st: st["detached"], timeout=40, what="detached")
            assert "lists this backend no more" in st["message"]
        finally:
            b.stop()
