"""End to end against a real Label Studio 1.23 (headless, PostgreSQL, 127.0.0.1) and the fake LLM.

The backend runs in this process behind a real HTTP server, so Label Studio calls /setup,
/predict and /webhook exactly as in production.
"""
import threading

import pytest
import requests
from werkzeug.serving import make_server

from _wsgi import create_app
from alllabel.annotators import example_from_spans
from alllabel.llm import LLMConfig
from alllabel.ls_client import LabelStudioAPI
from alllabel.orchestrator import QUEUE_SCORE_STEP
from alllabel.settings import Settings
from model import ALLabelBackend
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI, gold_responder
from tests.label_studio import free_port

MV = "alllabel-e2e"
N_TASKS = 40
BUDGET = 6
LABELS = sorted({e["label"] for r in mof_records() for e in r["entities"]})
CONFIG = (
    '<View><Labels name="label" toName="text">'
    + "".join(f'<Label value="{lab}"/>' for lab in LABELS)
    + '</Labels><Text name="text" value="$text"/></View>'
)


@pytest.fixture(scope="module")
def ls(label_studio):
    """The session's Label Studio on PostgreSQL (tests/conftest.py)."""
    return label_studio


class Backend:
    def __init__(self, tmp_path, ls, fake, **settings):
        self.settings = Settings(state_dir=tmp_path / "state", model_version=MV, budget=BUDGET, sync_interval=3600, **settings)
        self.ls_api = lambda: LabelStudioAPI(ls.url, ls.token)
        llm = LLMConfig(api_key="test", base_url=fake.base_url, backoff_base=0.01, max_retries=1, concurrency=2)
        self.backend = ALLabelBackend(self.settings, ls_factory=self.ls_api, llm_config=llm)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server("127.0.0.1", self.port, create_app(self.backend), threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def orch(self):
        return self.backend.orchestrator

    def idle(self):
        assert self.orch.jobs.wait_idle(300), "background jobs did not finish"

    def stop(self):
        self.server.shutdown()


def gold_spans(rec):
    return [{"start": e["start"], "end": e["end"], "label": e["label"]} for e in rec["entities"]]


def result_of(rec):
    return [
        {"from_name": "label", "to_name": "text", "type": "labels", "value": {"start": s["start"], "end": s["end"], "text": rec["text"][s["start"]:s["end"]], "labels": [s["label"]]}}
        for s in gold_spans(rec)
    ]


def new_project(ls, title, records):
    c = LabelStudioAPI(ls.url, ls.token).client
    p = c.projects.create(title=title, label_config=CONFIG)
    ids = c.projects.import_tasks(id=p.id, request=[{"text": r["text"], "rid": r["id"]} for r in records], return_task_ids=True).task_ids
    return c, p.id, dict(zip(ids, records))


def headers(ls):
    return {"Authorization": f"Token {ls.token}"}


def test_queue_order_budget_and_prelabels(ls, tmp_path):
    records = mof_records()[:N_TASKS]
    by_text = {r["text"]: example_from_spans(r["text"], gold_spans(r)).entities for r in records}
    with FakeOpenAI(gold_responder(by_text)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            c, pid, rec_of = new_project(ls, "MOF e2e", records)
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            queue = b.orch.state.queue(pid)
            assert len(queue) == BUDGET and [e["stage"] for e in queue] == ["diversity"] + ["similarity"] * 4 + ["uncertainty"]
            project = c.projects.get(id=pid)
            assert project.model_version == MV and project.sampling == "Uncertainty sampling"
            assert any((v.data or {}).get("title") == "ALLabel queue" for v in c.views.list(project=pid))

            # "Label Tasks As Displayed" on the ALLabel tab starts with the queue's first task.
            view = next(v.id for v in c.views.list(project=pid) if (v.data or {}).get("title") == "ALLabel queue")
            shown = requests.post(f"{ls.url}/api/dm/actions?id=next_task&project={pid}&view={view}", headers=headers(ls), json={}).json()
            assert shown["id"] == queue[0]["task_id"]

            # Humans get the ALLabel order through the labeling stream: "Label All Tasks" sends the
            # next_task action with an empty body; the API's /next is the same queue.
            served = []
            for n in range(BUDGET):
                if n % 2:
                    task = requests.get(f"{ls.url}/api/projects/{pid}/next", headers=headers(ls)).json()
                else:
                    task = requests.post(f"{ls.url}/api/dm/actions?id=next_task&project={pid}", headers=headers(ls), json={}).json()
                served.append(task["id"])
                r = requests.post(f"{ls.url}/api/tasks/{task['id']}/annotations/", headers=headers(ls), json={"result": result_of(rec_of[task["id"]])})
                assert r.status_code == 201
            assert served == [e["task_id"] for e in queue]
            b.idle()  # the last webhook reached the budget and started pre-annotation

            status = b.orch.status(pid)["projects"][0]
            assert status["phase"] == "done" and status["annotated_tasks"] == BUDGET
            assert status["prelabels"] == {"done": N_TASKS - BUDGET, "failed": 0, "pushed": N_TASKS - BUDGET}
            # Every remaining task has exactly one prediction of our version, and it is the gold answer.
            preds = LabelStudioAPI(ls.url, ls.token).predictions(pid)
            per_task = {}
            for p in preds:
                assert p.model_version == MV
                per_task.setdefault(p.task, []).append(p)
            assert set(per_task) == set(rec_of) and all(len(v) == 1 for v in per_task.values())
            for tid, rec in rec_of.items():
                if tid in served:
                    continue
                (p,) = per_task[tid]
                got = {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in p.result}
                gold = {(s["start"], s["end"], s["label"]) for s in gold_spans(rec)}
                assert got and got <= gold and 0 < p.score <= 1
            # The prompts used the annotated tasks, and only those, as demonstrations.
            shown = {m["content"].split(":\n", 1)[1] for req in fake.requests for m in req["messages"] if m["role"] == "user" and m["content"].startswith("Example")}
            assert shown and shown <= {rec_of[t]["text"] for t in served}
            # /predict serves the same stored pre-annotation.
            some = next(t for t in rec_of if t not in served)
            r = requests.post(f"{b.url}/predict", json={"tasks": [{"id": some}], "project": f"{pid}.0"}).json()
            assert r["results"][0]["result"] == per_task[some][0].result
            # Review goes lowest confidence first.
            nxt = requests.get(f"{ls.url}/api/projects/{pid}/next", headers=headers(ls)).json()
            remaining = [per_task[t][0].score for t in rec_of if t not in served]
            assert nxt["predictions"][0]["score"] == min(remaining)
        finally:
            b.stop()


def test_personal_access_token(ls, tmp_path):
    pat = requests.post(f"{ls.url}/api/token/", headers=headers(ls)).json()["token"]  # a JWT refresh token
    assert pat.count(".") == 2
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        b.orch.ls_factory = lambda: LabelStudioAPI(ls.url, pat)
        try:
            c, pid, _ = new_project(ls, "pat", mof_records()[400:420])
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            assert b.orch.status(pid)["projects"][0]["queue"] == {"selected": BUDGET, "pushed": BUDGET}
            assert c.projects.get(id=pid).sampling == "Uncertainty sampling"
        finally:
            b.stop()


def test_bad_api_key_is_explained(ls, tmp_path):
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        b.orch.ls_factory = lambda: LabelStudioAPI(ls.url, "not-a-valid-token")
        try:
            c, pid, _ = new_project(ls, "bad key", mof_records()[420:425])
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            assert "rejected the API key (HTTP 401)" in b.orch.state.project(pid)["message"]
        finally:
            b.stop()


def test_new_tasks_join_the_queue(ls, tmp_path):
    records = mof_records()[100:130]
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            c, pid, rec_of = new_project(ls, "growing", records[:20])
            # Tasks without usable text are reported and left alone, never selected.
            bad = c.projects.import_tasks(id=pid, request=[{"text": "   "}, {"text": 42}], return_task_ids=True).task_ids
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            first = b.orch.state.queue(pid)
            c.projects.import_tasks(id=pid, request=[{"text": r["text"]} for r in records[20:]])  # TASKS_CREATED webhook
            b.idle()
            queue = b.orch.state.queue(pid)
            assert queue[: len(first)] == first  # the existing order is kept
            assert len({e["task_id"] for e in queue}) == len(queue)
            preds = LabelStudioAPI(ls.url, ls.token).predictions(pid, MV)
            assert sorted(p.task for p in preds) == sorted(e["task_id"] for e in queue)
            assert b.orch.state.skipped(pid) == {bad[0]: "empty text", bad[1]: "task data field 'text' is missing or not text"}
            assert not set(bad) & {e["task_id"] for e in queue}
            assert {p.task: p.score for p in preds} == {e["task_id"]: e["position"] * QUEUE_SCORE_STEP for e in queue}
        finally:
            b.stop()


class FlakyLS(LabelStudioAPI):
    """Label Studio that dies after storing the first pre-annotation batch."""

    fail_after = 1

    def import_predictions(self, project_id, predictions):
        n = super().import_predictions(project_id, predictions)
        if predictions and predictions[0]["result"]:
            FlakyLS.fail_after -= 1
            if FlakyLS.fail_after < 0:
                raise RuntimeError("simulated crash after Label Studio stored the batch")
        return n


def test_crash_during_push_resumes_without_duplicates_or_losses(ls, tmp_path):
    records = mof_records()[200:230]
    by_text = {r["text"]: example_from_spans(r["text"], gold_spans(r)).entities for r in records}
    with FakeOpenAI(gold_responder(by_text)) as fake:
        b = Backend(tmp_path, ls, fake, push_batch=5)
        try:
            c, pid, rec_of = new_project(ls, "crash", records)
            b.orch.ls_factory = lambda: FlakyLS(ls.url, ls.token)
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            for e in b.orch.state.queue(pid):
                requests.post(f"{ls.url}/api/tasks/{e['task_id']}/annotations/", headers=headers(ls), json={"result": result_of(rec_of[e["task_id"]])})
            b.idle()
            assert "simulated crash" in b.orch.state.project(pid)["message"]
            calls = len(fake.requests)
        finally:
            b.stop()
        # A new process on the same state directory finishes the job.
        b2 = Backend(tmp_path, ls, fake, push_batch=5)
        try:
            requests.post(f"{b2.url}/webhook", json={"action": "START_TRAINING", "project": {"id": pid}})
            b2.idle()
            st = b2.orch.status(pid)["projects"][0]
            assert st["phase"] == "done" and st["prelabels"]["pushed"] == len(records) - st["annotated_tasks"]
            assert len(fake.requests) == calls  # nothing was asked twice: state + LLM cache
            preds = LabelStudioAPI(ls.url, ls.token).predictions(pid, MV)
            tasks = [p.task for p in preds]
            assert sorted(tasks) == sorted(rec_of) and len(tasks) == len(set(tasks))
        finally:
            b2.stop()


def test_llm_down_loses_nothing(ls, tmp_path):
    records = mof_records()[300:320]
    with FakeOpenAI() as fake:
        fake.script = [{"status": 500}] * 1000
        b = Backend(tmp_path, ls, fake)
        try:
            c, pid, rec_of = new_project(ls, "llm down", records)
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            for e in b.orch.state.queue(pid):
                requests.post(f"{ls.url}/api/tasks/{e['task_id']}/annotations/", headers=headers(ls), json={"result": result_of(rec_of[e["task_id"]])})
            b.idle()
            st = b.orch.status(pid)["projects"][0]
            left = len(records) - st["annotated_tasks"]
            assert st["prelabels"] == {"done": 0, "failed": left, "pushed": 0} and "failed" in st["message"]
            fake.script = []  # the LLM is back: the next sync retries the failed tasks
            requests.post(f"{b.url}/webhook", json={"action": "START_TRAINING", "project": {"id": pid}})
            b.idle()
            st = b.orch.status(pid)["projects"][0]
            assert st["prelabels"]["done"] == left and st["prelabels"]["pushed"] == left
        finally:
            b.stop()


def test_basic_auth_backend_gets_its_webhooks(ls, tmp_path):
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake, basic_auth_user="ls-user", basic_auth_pass="s3cret")
        try:
            c, pid, rec_of = new_project(ls, "basic auth", mof_records()[430:440])
            c.ml.create(project=pid, url=b.url, title=MV, auth_method="BASIC_AUTH", basic_auth_user="ls-user", basic_auth_pass="s3cret")
            b.idle()
            assert b.orch.status(pid)["projects"][0]["queue"]["pushed"] == BUDGET
            # LS creates the backend's webhook without credentials; the backend added them.
            hooks = [w for w in c.webhooks.list(project=str(pid)) if w.url.startswith(b.url)]
            assert hooks and all((w.headers or {}).get("Authorization", "").startswith("Basic ") for w in hooks)
            task = requests.get(f"{ls.url}/api/projects/{pid}/next", headers=headers(ls)).json()
            requests.post(f"{ls.url}/api/tasks/{task['id']}/annotations/", headers=headers(ls), json={"result": result_of(rec_of[task["id"]])})
            assert b.orch.state.annotated_tasks(pid) == {task["id"]}  # the webhook got through
            assert requests.get(f"{b.url}/health").status_code == 401
        finally:
            b.stop()


def test_sampling_is_reasserted_after_a_project_edit(ls, tmp_path):
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            c, pid, _ = new_project(ls, "settings edit", mof_records()[440:450])
            c.ml.create(project=pid, url=b.url, title=MV)
            b.idle()
            c.projects.update(id=pid, sampling="Sequential sampling")  # e.g. the settings form re-saved
            b.idle()
            assert c.projects.get(id=pid).sampling == "Uncertainty sampling"
        finally:
            b.stop()
