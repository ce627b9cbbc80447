"""Signed webhooks against a real Label Studio 1.23: the backend's header on Label Studio's own
webhook, refused forgeries, and a new secret when the webhook is re-created."""

import time

import pytest
import requests

from alllabel.backend.webhook_auth import HEADER, RECHECK
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_label_studio import LS, MV, Backend, our_hooks, webhook_secret


def test_webhooks_are_signed_and_a_recreated_webhook_gets_a_new_secret(label_studio, tmp_path):
    ls = label_studio
    api = LS(ls)
    records = mof_records()[300:316]
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake, sync_interval=600)  # no periodic sync: webhooks only
        try:
            pid, rec_of = api.new_project("signed", records)
            assert api.connect(pid, b.url).status_code == 201
            first = webhook_secret(api, pid, b)
            task = api.next(pid)["id"]
            forged = {
                "action": "ANNOTATION_CREATED",
                "project": {"id": pid},
                "annotation": {"id": 1, "task": task, "was_cancelled": False},
            }
            r = requests.post(f"{b.url}/webhook", json=forged)
            assert r.status_code == 401 and b.orch.state.claims(pid) == []
            before = b.orch.status()["webhooks"]
            api.annotate(task, rec_of[task])  # Label Studio's own, signed webhook
            b.wait_for(pid, lambda st: st["annotated_tasks"] == 1, timeout=10, what="the claim")
            after = b.orch.status()["webhooks"]
            assert after["accepted"] == before["accepted"] + 1
            assert after["refused"] == before["refused"]
            # Re-created: the webhook deleted, the model connected again (LS makes a new webhook).
            for w in our_hooks(api, pid, b):
                assert api.send("DELETE", f"/api/webhooks/{w['id']}/").status_code == 204
            for m in api.get("/api/ml/", project=pid):
                assert api.send("DELETE", f"/api/ml/{m['id']}").status_code == 204
            assert api.connect(pid, b.url).status_code == 201
            # The new webhook's first event is refused (unsigned); the refusal makes the backend
            # sign the webhook with a new secret, and the probe that does it counts the annotation.
            task = api.next(pid)["id"]
            api.annotate(task, rec_of[task])
            second = webhook_secret(api, pid, b, other_than=first)
            assert (b.orch.settings.state_dir / "webhook-secrets" / str(pid)).read_text() == second
            b.wait_for(pid, lambda st: st["annotated_tasks"] == 2, timeout=10, what="the sync")
            assert b.orch.status()["webhooks"]["refused"] == after["refused"] + 1
            r = requests.post(f"{b.url}/webhook", json=forged, headers={HEADER: first})
            assert r.status_code == 401 and b.orch.state.claims(pid) == []
            task = api.next(pid)["id"]
            api.annotate(task, rec_of[task])
            b.wait_for(pid, lambda st: st["annotated_tasks"] == 3, timeout=10, what="the claim")
            assert b.orch.status()["webhooks"]["accepted"] == after["accepted"] + 1
        finally:
            b.stop()


def test_the_demo_connects_a_backend_that_has_basic_auth(label_studio, tmp_path):
    """scripts/demo.py gives Label Studio the backend's credentials (Basic Auth); without them
    Label Studio cannot even connect it."""
    from label_studio_sdk import LabelStudio as Client
    from label_studio_sdk.core.api_error import ApiError

    from scripts.demo import connect

    api = LS(label_studio)
    client = Client(base_url=label_studio.url, api_key=label_studio.token)
    with FakeOpenAI() as fake:
        b = Backend(
            tmp_path,
            label_studio,
            fake,
            basic_auth_user="demo",
            basic_auth_pass="pw-123456",
            sync_interval=600,
        )
        try:
            pid, _ = api.new_project("demo with auth", mof_records()[500:512])
            with pytest.raises(ApiError, match="authentication"):
                connect(client, pid, b.url, MV)
            connect(client, pid, b.url, MV, ("demo", "pw-123456"))
            (ml,) = api.get("/api/ml/", project=pid)
            assert ml["auth_method"] == "BASIC_AUTH" and ml["state"] == "CO"
            assert b.status(pid)["queue"]["selected"] > 0  # its /setup got through
            webhook_secret(api, pid, b)  # and the backend signed the webhook
            # Once signed, Label Studio's /setup calls (one per /next once predictions show) cost
            # Label Studio no request: the webhook is checked again only when an event is refused.
            time.sleep(
                1.5
            )  # the connect's second /setup may have left a check for its window's end
            b.idle(pid)
            before = b.orch.status()["label_studio_requests"]
            config = api.project(pid)["label_config"]
            for _ in range(5):
                r = requests.post(
                    f"{b.url}/setup",
                    json={"project": f"{pid}.1", "schema": config},
                    auth=("demo", "pw-123456"),
                )
                assert r.status_code == 200
            time.sleep(RECHECK + 1)  # a check asked for inside the window would run at its end
            b.idle(pid)
            assert b.orch.status()["label_studio_requests"] == before
        finally:
            b.stop()
