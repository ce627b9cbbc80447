"""End to end against a real Label Studio 1.23 (headless, PostgreSQL, 127.0.0.1) and the fake LLM.

The backend runs in this process behind a real HTTP server, so Label Studio calls /setup,
/predict and /webhook exactly as in production. Annotators are driven through Label Studio's
API (``/next`` + submit), as the "Label All Tasks" button does.
"""

import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from _wsgi import create_app
from alllabel.backend.ls_client import LabelStudioAPI
from alllabel.backend.ls_format import queue_score
from alllabel.backend.settings import Settings
from alllabel.backend.webhook_auth import HEADER
from alllabel.llm.client import LLMConfig
from alllabel.prelabel.prompt import example_from_spans
from model import ALLabelBackend
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI, gold_responder
from tests.label_studio import add_annotator, free_port

MV = "alllabel-e2e"
N_TASKS = 40
BUDGET = 6
RESERVE = 5
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


class LS:
    """The few Label Studio calls the tests make, as a user (or the admin) would."""

    def __init__(self, server, token=None):
        self.url, self.token = server.url, token or server.token

    def _h(self, token=None):
        return {"Authorization": f"Token {token or self.token}"}

    def get(self, path, token=None, **params):
        r = requests.get(self.url + path, headers=self._h(token), params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def send(self, method, path, body=None, token=None):
        return requests.request(
            method, self.url + path, headers=self._h(token), json=body, timeout=30
        )

    def new_project(self, title, records, config=CONFIG):
        pid = self.send("POST", "/api/projects/", {"title": title, "label_config": config}).json()[
            "id"
        ]
        ids = self.send(
            "POST",
            f"/api/projects/{pid}/import?return_task_ids=true",
            [{"text": r["text"]} for r in records],
        ).json()["task_ids"]
        return pid, dict(zip(ids, records))

    def connect(self, pid, url, **extra):
        return self.send("POST", "/api/ml", {"project": pid, "url": url, "title": MV, **extra})

    def project(self, pid):
        return self.get(f"/api/projects/{pid}/")

    def next(self, pid, token=None):
        return self.get(f"/api/projects/{pid}/next", token)

    def annotate(self, task_id, rec, token=None):
        r = self.send(
            "POST", f"/api/tasks/{task_id}/annotations/", {"result": result_of(rec)}, token
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def predictions(self, pid):
        return LabelStudioAPI(self.url, self.token).predictions(pid)

    def start_training(self, pid):
        ml = self.get("/api/ml/", project=pid)[0]["id"]
        assert self.send("POST", f"/api/ml/{ml}/train").status_code in (200, 201)


class Backend:
    def __init__(self, tmp_path, ls, fake, key=None, llm=None, port=None, **settings):
        self.port = port or free_port()  # a restarted backend keeps its URL
        self.url = f"http://127.0.0.1:{self.port}"
        defaults = dict(
            backend_url=self.url,  # a model connected under another title is still ours
            state_dir=tmp_path / "state",
            model_version=MV,
            budget=BUDGET,
            sync_interval=2,
            queue_reserve=RESERVE,
            max_backoff=2,
            llm_max_backoff=1,
        )
        self.settings = Settings(**{**defaults, **settings})
        llm = LLMConfig(
            **{
                "api_key": "test",
                "base_url": fake.base_url,
                "max_retries": 1,
                "concurrency": 2,
                **(llm or {}),
            }
        )
        self.backend = ALLabelBackend(
            self.settings,
            ls_factory=lambda: LabelStudioAPI(ls.url, key or ls.token),
            llm_config=llm,
        )
        self.server = make_server("127.0.0.1", self.port, create_app(self.backend), threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def orch(self):
        return self.backend.orchestrator

    def status(self, pid):
        return self.orch.status(pid)["projects"][0]

    def idle(self, pid, timeout=120):
        assert self.orch.wait_idle(pid, timeout), (
            f"project {pid} did not settle: {self.status(pid)}"
        )

    def wait_for(self, pid, check, timeout=60, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(pid)
            if check(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"{what} not reached within {timeout}s: {self.status(pid)}")

    def stop(self):
        self.server.shutdown()
        self.orch.close()


def gold_spans(rec):
    return [{"start": e["start"], "end": e["end"], "label": e["label"]} for e in rec["entities"]]


def result_of(rec):
    return [
        {
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {
                "start": s["start"],
                "end": s["end"],
                "text": rec["text"][s["start"] : s["end"]],
                "labels": [s["label"]],
            },
        }
        for s in gold_spans(rec)
    ]


def oracle(records):
    return gold_responder(
        {r["text"]: example_from_spans(r["text"], gold_spans(r)).entities for r in records}
    )


def per_task(preds):
    out = {}
    for p in preds:
        assert p.model_version == MV
        out.setdefault(p.task, []).append(p)
    return out


def test_queue_order_budget_and_prelabels(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[:N_TASKS]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("MOF e2e", records)
            assert api.connect(pid, b.url).status_code == 201
            # The first /setup waited for the queue: it is in Label Studio before anyone can ask for a task.
            queue = b.orch.state.queue(pid)
            assert len(queue) == BUDGET + RESERVE and all(q.pushed for q in queue)
            assert [q.stage for q in queue[:BUDGET]] == ["diversity"] + ["similarity"] * 4 + [
                "uncertainty"
            ]
            project = api.project(pid)
            assert project["model_version"] == MV and project["sampling"] == "Uncertainty sampling"
            assert (
                project["show_collab_predictions"] is False
            )  # annotators see no empty "0.00%" prediction
            assert [v["data"]["title"] for v in api.get("/api/dm/views/", project=pid)] == [
                "Default",
                "ALLabel queue",
            ]

            # "Label Tasks As Displayed" on the ALLabel tab starts with the queue's first task.
            view = api.get("/api/dm/views/", project=pid)[1]["id"]
            shown = api.send(
                "POST", f"/api/dm/actions?id=next_task&project={pid}&view={view}", {}
            ).json()
            assert shown["id"] == queue[0].task_id

            # "Label All Tasks" (the next_task action with an empty body) and /next serve the ALLabel order.
            served = []
            for n in range(BUDGET):
                task = (
                    api.next(pid)
                    if n % 2
                    else api.send("POST", f"/api/dm/actions?id=next_task&project={pid}", {}).json()
                )
                assert task["predictions"] == []
                served.append(task["id"])
                api.annotate(task["id"], rec_of[task["id"]])
            assert served == [q.task_id for q in queue[:BUDGET]]
            b.wait_for(pid, lambda st: st["phase"] == "done", what="pre-annotation")
            b.idle(pid)

            status = b.status(pid)
            assert status["annotated_tasks"] == BUDGET and status["prelabels"] == {
                "done": N_TASKS - BUDGET,
                "failed": 0,
                "pushed": N_TASKS - BUDGET,
            }
            assert api.project(pid)["show_collab_predictions"] is True  # switched on at the budget
            # Every remaining task has exactly one prediction of our version, and it is the gold answer.
            preds = per_task(api.predictions(pid))
            assert set(preds) == set(rec_of) and all(len(v) == 1 for v in preds.values())
            for tid, rec in rec_of.items():
                if tid in served:
                    continue
                (p,) = preds[tid]
                got = {
                    (r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
                    for r in p.result
                }
                assert (
                    got
                    and got <= {(s["start"], s["end"], s["label"]) for s in gold_spans(rec)}
                    and 0 < p.score <= 1
                )
            # The prompts used the annotated tasks, and only those, as demonstrations.
            shown = {
                m["content"].split(":\n", 1)[1]
                for req in fake.requests
                for m in req["messages"]
                if m["role"] == "user" and m["content"].startswith("Example")
            }
            assert shown and shown <= {rec_of[t]["text"] for t in served}
            # /predict gives nothing for tasks Label Studio already holds our prediction for (no duplicates).
            some = next(t for t in rec_of if t not in served)
            assert requests.post(
                f"{b.url}/predict", json={"tasks": [{"id": some}], "project": f"{pid}.0"}
            ).json()["results"] == [[]]
            # Review goes lowest confidence first, with the pre-annotation shown.
            nxt = api.next(pid)
            assert nxt["predictions"][0]["score"] == min(
                preds[t][0].score for t in rec_of if t not in served
            )
            assert nxt["predictions"][0]["result"]
        finally:
            b.stop()


def test_two_fast_annotators_and_constant_resyncs_lose_nothing(ls, tmp_path):
    """Issue 8, defect 1: annotations recorded from webhooks were erased by a re-sync snapshot."""
    api = LS(ls)
    records = mof_records()[:300]
    second = add_annotator(ls, f"annotator-{time.time_ns()}@example.com")
    budget = 20
    stop = threading.Event()
    with FakeOpenAI(oracle(records)) as fake:
        fake.latency = 0.05
        b = Backend(tmp_path, ls, fake, budget=budget)
        try:
            pid, rec_of = api.new_project("race", records)
            assert api.connect(pid, b.url).status_code == 201
            controller = b.orch.controllers[pid]

            def resync():  # full snapshots of Label Studio, one after the other, during the whole race
                while not stop.is_set():
                    controller.wake(full=True)
                    time.sleep(0.3)

            annotated = set()

            def annotator(
                token,
            ):  # next + submit as fast as Label Studio answers, until the budget is in
                while len(annotated) < budget:
                    task = api.next(pid, token)
                    api.annotate(task["id"], rec_of[task["id"]], token)
                    annotated.add(
                        task["id"]
                    )  # (on SQLite two annotators can get the same task: LS locks need PostgreSQL)

            threads = [threading.Thread(target=resync, daemon=True)] + [
                threading.Thread(target=annotator, args=(t,), daemon=True)
                for t in (ls.token, second)
            ]
            for t in threads:
                t.start()
            for t in threads[1:]:
                t.join(120)
            done_at = time.monotonic()
            in_ls = api.project(pid)["num_tasks_with_annotations"]
            assert in_ls == len(annotated) >= budget
            st = b.wait_for(
                pid,
                lambda st: st["annotated_tasks"] == in_ls and st["phase"] != "planned",
                timeout=15,
                what="every annotation counted",
            )
            print(
                f"phase {st['phase']} {time.monotonic() - done_at:.2f}s after the last annotation; {in_ls} annotated tasks in LS and in /status"
            )
            assert (
                st["annotated_from_queue"] == in_ls
            )  # every task served came from the ALLabel queue
        finally:
            stop.set()
            b.stop()


def test_label_studio_down_mid_push_heals_by_itself(ls, tmp_path):
    """Issue 8, defect 2: stop Label Studio during the push, start it again: no user action needed."""
    api = LS(ls)
    records = mof_records()[320:380]
    with FakeOpenAI(oracle(records)) as fake:
        fake.latency = 0.1
        b = Backend(tmp_path, ls, fake, push_batch=5)
        try:
            pid, rec_of = api.new_project("outage", records)
            assert api.connect(pid, b.url).status_code == 201
            for q in b.orch.state.queue(pid)[:BUDGET]:
                api.annotate(q.task_id, rec_of[q.task_id])
            b.wait_for(pid, lambda st: st["prelabels"]["pushed"] >= 5, what="first pushes")
            ls.stop_label_studio()  # in the middle of the push
            b.wait_for(
                pid, lambda st: st["prelabels"]["done"] == len(records) - BUDGET, what="LLM run"
            )
            assert b.status(pid)["prelabels"]["pushed"] < len(records) - BUDGET
            assert "cannot reach Label Studio" in b.status(pid)["message"]
            ls.start_label_studio()
            back = time.monotonic()
            b.wait_for(
                pid,
                lambda st: (
                    st["phase"] == "done" and st["prelabels"]["pushed"] == len(records) - BUDGET
                ),
                timeout=60,
                what="healing",
            )
            print(f"healed {time.monotonic() - back:.1f}s after Label Studio came back")
            preds = per_task(api.predictions(pid))
            assert set(preds) == set(rec_of) and all(len(v) == 1 for v in preds.values())
        finally:
            b.stop()
            if ls.proc.poll() is not None:
                ls.start_label_studio()


def test_predictions_stream_while_the_run_goes(ls, tmp_path):
    """Issue 8, defect 3: pre-annotations reach Label Studio within seconds, not at the end of the run."""
    api = LS(ls)
    records = mof_records()[380:440]
    with FakeOpenAI(oracle(records)) as fake:
        fake.latency = 0.5
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("streaming", records)
            assert api.connect(pid, b.url).status_code == 201
            queued = {q.task_id for q in b.orch.state.queue(pid)}
            for q in b.orch.state.queue(pid)[:BUDGET]:
                api.annotate(q.task_id, rec_of[q.task_id])
            remaining = len(records) - BUDGET
            deadline = time.monotonic() + 120
            while len(fake.requests) < remaining / 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            visible = {p.task for p in api.predictions(pid) if p.task not in queued or p.result}
            print(
                f"{len(visible)} of {remaining} pre-annotations in Label Studio when {len(fake.requests)} LLM calls were made"
            )
            assert len(visible) >= 0.2 * remaining
            assert b.status(pid)["phase"] == "prelabeling"  # the run was still going
        finally:
            b.stop()


def test_no_random_task_after_the_budget(ls, tmp_path):
    """Issue 8, defect 4: right after the budget's last annotation, the next tasks are the next ALLabel
    picks or pre-annotated tasks, never a task without a prediction of ours."""
    api = LS(ls)
    records = mof_records()[440:500]
    with FakeOpenAI(oracle(records)) as fake:
        fake.latency = 0.3
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("hand-over", records)
            assert api.connect(pid, b.url).status_code == 201
            order = [q.task_id for q in b.orch.state.queue(pid)]
            for _ in range(BUDGET):
                task = api.next(pid)
                api.annotate(task["id"], rec_of[task["id"]])
            for _ in range(
                3 * RESERVE
            ):  # straight on, faster than any human, as an annotator pressing Submit does
                task = api.next(pid)
                ours = [
                    p
                    for p in api.get("/api/predictions/", task=task["id"])
                    if p["model_version"] == MV
                ]
                pre_annotated = any(
                    p["score"] != queue_score(order.index(task["id"]))
                    if task["id"] in order
                    else True
                    for p in ours
                )
                assert ours and (pre_annotated or task["id"] in order[BUDGET:]), (
                    f"task {task['id']} was served without a prediction of ours"
                )
                api.annotate(task["id"], rec_of[task["id"]])
        finally:
            b.stop()


def test_the_users_choices_are_left_alone_until_start_training(ls, tmp_path):
    """Issue 8, defect 5: a user's Sequential sampling survives a minute of annotating; Start Training
    brings the ALLabel order back. The tab the user edited is never overwritten."""
    api = LS(ls)
    records = mof_records()[500:560]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake, budget=30)
        try:
            pid, rec_of = api.new_project("user settings", records)
            assert api.connect(pid, b.url).status_code == 201
            tab = api.get("/api/dm/views/", project=pid)[1]
            edited = {
                **tab["data"],
                "hiddenColumns": {"explore": ["tasks:inner_id"], "labeling": []},
            }
            assert api.send(
                "PATCH", f"/api/dm/views/{tab['id']}/", {"project": pid, "data": edited}
            ).ok
            assert api.send(
                "PATCH", f"/api/projects/{pid}/", {"sampling": "Sequential sampling"}
            ).ok
            requests_before = b.orch.ls().requests
            started = time.monotonic()
            while time.monotonic() - started < 60:  # a minute of annotating, with a probe every 2 s
                task = api.next(pid)
                api.annotate(task["id"], rec_of[task["id"]])
                time.sleep(2.5)
            assert api.project(pid)["sampling"] == "Sequential sampling"
            st = b.status(pid)
            assert any(
                "queue order off: project sampling is 'Sequential sampling'" in w
                for w in st["warnings"]
            )
            patches = b.orch.ls().requests - requests_before
            print(f"{patches} Label Studio requests in a minute of annotating")
            api.start_training(pid)
            b.wait_for(pid, lambda st: not st["warnings"], timeout=20, what="order restored")
            assert api.project(pid)["sampling"] == "Uncertainty sampling"
            assert (
                api.get(f"/api/dm/views/{tab['id']}/")["data"]["hiddenColumns"]
                == edited["hiddenColumns"]
            )
        finally:
            b.stop()


def test_a_second_project_is_planned_while_the_first_one_runs(ls, tmp_path):
    """Issue 8, defect 7: one project's long run does not delay another project."""
    api = LS(ls)
    first, second = mof_records()[560:600], mof_records()[600:640]
    with FakeOpenAI(oracle(first + second)) as fake:
        fake.latency = 1.0
        b = Backend(tmp_path, ls, fake)
        try:
            pid1, rec1 = api.new_project("long run", first)
            assert api.connect(pid1, b.url).status_code == 201
            for q in b.orch.state.queue(pid1)[:BUDGET]:
                api.annotate(q.task_id, rec1[q.task_id])
            b.wait_for(
                pid1,
                lambda st: st.get("run", {}).get("progress", {}).get("done", 0) >= 1,
                what="the first run",
            )
            pid2, _ = api.new_project("meanwhile", second)
            started = time.monotonic()
            assert api.connect(pid2, b.url).status_code == 201
            b.wait_for(
                pid2,
                lambda st: st["queue"]["pushed"] == BUDGET + RESERVE,
                timeout=20,
                what="second project planned",
            )
            print(f"second project planned in {time.monotonic() - started:.1f}s")
            assert api.project(pid2)["sampling"] == "Uncertainty sampling"
            assert b.status(pid1)["phase"] == "prelabeling"  # still running
        finally:
            b.stop()


def test_a_model_title_other_than_the_model_version_is_corrected_and_explained(ls, tmp_path):
    """Label Studio sets the project's model version to the model's title when it creates the model:
    with a mistyped title, Uncertainty sampling would find no prediction of that version (random tasks)."""
    api = LS(ls)
    records = mof_records()[20:40]
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, _ = api.new_project("title", records)
            r = api.send("POST", "/api/ml", {"project": pid, "url": b.url, "title": "My NER model"})
            assert r.status_code == 201
            st = b.wait_for(
                pid,
                lambda st: any("title 'My NER model'" in w for w in st["warnings"]),
                timeout=20,
                what="the warning",
            )
            assert api.project(pid)["model_version"] == MV
            assert (
                api.next(pid)["id"] == b.orch.state.queue(pid)[0].task_id
            )  # the ALLabel order, not a random task
            assert "rename the model" in st["warnings"][0]
        finally:
            b.stop()


def test_a_wrong_key_is_named_when_connecting(ls, tmp_path):
    """Issue 8, defect 6: Label Studio's connect answer says what is wrong."""
    api = LS(ls)
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake, key="not-a-valid-token")
        try:
            pid, _ = api.new_project("bad key", mof_records()[640:645])
            r = api.connect(pid, b.url)
            assert r.status_code == 400 and "rejected LABEL_STUDIO_API_KEY (HTTP 401" in r.text
            assert "personal access token" in r.text
        finally:
            b.stop()


def test_an_unsupported_config_is_explained_when_connecting(ls, tmp_path):
    api = LS(ls)
    config = (
        '<View><Text name="text" value="$text"/><Image name="photo" value="$image"/>'
        '<Choices name="c" toName="text"><Choice value="a"/></Choices></View>'
    )
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid = api.send(
                "POST", "/api/projects/", {"title": "text and image", "label_config": config}
            ).json()["id"]
            tasks = [{"text": r["text"], "image": "/static/x.png"} for r in mof_records()[645:650]]
            assert api.send("POST", f"/api/projects/{pid}/import", tasks).status_code == 201
            r = api.connect(pid, b.url)
            shown = r.json()["validation_errors"]["non_field_errors"][0]
            assert r.status_code == 400 and (
                'the labeling config has <Image name="photo">: ALLabel works on text projects'
                in shown
            ), shown
        finally:
            b.stop()


def our_hooks(api, pid, b):
    return [w for w in api.get("/api/webhooks/", project=pid) if w["url"].startswith(b.url)]


def webhook_secret(api, pid, b, other_than=None, timeout=20):
    """The secret header the backend put on Label Studio's webhook (waits until it is there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hooks = our_hooks(api, pid, b)
        values = {(w.get("headers") or {}).get(HEADER) for w in hooks}
        if hooks and len(values) == 1 and None not in values and other_than not in values:
            return values.pop()
        time.sleep(0.2)
    raise AssertionError(f"webhook not signed: {our_hooks(api, pid, b)}")


def test_forged_webhooks_do_not_start_pre_annotation(ls, tmp_path):
    """Unsigned events are refused; even signed ones (a leaked secret) are claims that Label Studio
    must confirm: events for annotations it does not have move nothing."""
    api = LS(ls)
    records = mof_records()[650:658] + mof_records()[0:12]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("forged", records)
            assert api.connect(pid, b.url).status_code == 201
            signed = {HEADER: webhook_secret(api, pid, b)}
            for n, q in enumerate(b.orch.state.queue(pid)):
                forged = {
                    "action": "ANNOTATION_CREATED",
                    "project": {"id": pid},
                    "annotation": {"id": 990000 + n, "task": q.task_id, "was_cancelled": False},
                }
                assert requests.post(f"{b.url}/webhook", json=forged).status_code == 401
                r = requests.post(f"{b.url}/webhook", json=forged, headers=signed)
                assert r.json()["status"] == "ok"
            b.wait_for(
                pid, lambda st: st["unconfirmed_claims"] == 0, timeout=20, what="claims checked"
            )
            st = b.status(pid)
            assert st["phase"] == "planned" and st["annotated_tasks"] == 0 and fake.requests == []
        finally:
            b.stop()


def test_new_tasks_join_the_queue(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[100:130]
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake, budget=0.2)
        try:
            pid, rec_of = api.new_project("growing", records[:20])
            bad = api.send(
                "POST",
                f"/api/projects/{pid}/import?return_task_ids=true",
                [{"text": "   "}, {"text": 42}],
            ).json()["task_ids"]
            assert api.connect(pid, b.url).status_code == 201
            first = [(q.task_id, q.position) for q in b.orch.state.queue(pid)]
            assert len(first) == 4 + RESERVE  # 20 % of the 20 usable tasks, and the reserve
            api.send(
                "POST", f"/api/projects/{pid}/import", [{"text": r["text"]} for r in records[20:]]
            )  # TASKS_CREATED webhook
            b.wait_for(
                pid,
                lambda st: (
                    st["queue"]["selected"] == 6 + RESERVE and st["queue"]["pushed"] == 6 + RESERVE
                ),
                timeout=30,
                what="new picks",
            )
            queue = b.orch.state.queue(pid)
            assert [(q.task_id, q.position) for q in queue][
                : len(first)
            ] == first  # the existing order is kept
            preds = api.predictions(pid)
            assert sorted(p.task for p in preds) == sorted(q.task_id for q in queue)
            assert {p.task: p.score for p in preds} == {
                q.task_id: queue_score(q.position) for q in queue
            }
            assert b.orch.state.skipped(pid) == {
                bad[0]: "empty text",
                bad[1]: "task data field 'text' is missing or not text",
            }
            assert not set(bad) & {q.task_id for q in queue}
        finally:
            b.stop()


class FlakyLS(LabelStudioAPI):
    """Label Studio that fails after storing the first pre-annotation batch, every time."""

    def import_predictions(self, project_id, predictions):
        n = super().import_predictions(project_id, predictions)
        if predictions and predictions[0]["result"]:
            raise RuntimeError("simulated crash after Label Studio stored the batch")
        return n


def test_crash_during_push_resumes_without_duplicates_or_losses(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[200:230]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake, push_batch=5)
        try:
            pid, rec_of = api.new_project("crash", records)
            assert api.connect(pid, b.url).status_code == 201
            b.orch.ls_factory = lambda: FlakyLS(ls.url, ls.token)
            for q in b.orch.state.queue(pid)[:BUDGET]:
                api.annotate(q.task_id, rec_of[q.task_id])
            b.wait_for(pid, lambda st: "simulated crash" in (st["message"] or ""), what="the crash")
            b.wait_for(
                pid, lambda st: st["prelabels"]["done"] == len(records) - BUDGET, what="the LLM run"
            )
            calls = len(fake.requests)
        finally:
            b.stop()
        # A new process on the same state directory finishes the job on its own.
        b2 = Backend(tmp_path, ls, fake, push_batch=5)
        try:
            b2.wait_for(
                pid,
                lambda st: (
                    st["phase"] == "done" and st["prelabels"]["pushed"] == len(records) - BUDGET
                ),
                what="resume",
            )
            assert len(fake.requests) == calls  # nothing was asked twice: state + LLM cache
            preds = per_task(api.predictions(pid))
            assert set(preds) == set(rec_of) and all(len(v) == 1 for v in preds.values())
        finally:
            b2.stop()


def test_llm_down_then_back_heals_by_itself(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[300:320]
    with FakeOpenAI() as fake:
        fake.script = [{"status": 500}] * 1000
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("llm down", records)
            assert api.connect(pid, b.url).status_code == 201
            for q in b.orch.state.queue(pid)[:BUDGET]:
                api.annotate(q.task_id, rec_of[q.task_id])
            left = len(records) - BUDGET
            # Near-duplicates of annotated tasks are projected without the LLM; every other task fails.
            st = b.wait_for(
                pid,
                lambda st: (
                    st["prelabels"]["failed"]
                    and st["prelabels"]["failed"] + st["prelabels"]["done"] == left
                ),
                what="failures",
            )
            assert st["phase"] == "prelabeling" and st["prelabels"]["done"] == sum(
                p.annotator == "near-duplicate-projection"
                for p in b.orch.state.predictions(pid).values()
            )
            fake.script = []  # the LLM is back: the retry comes without anyone pressing anything
            b.wait_for(
                pid,
                lambda st: st["phase"] == "done" and st["prelabels"]["pushed"] == left,
                timeout=60,
                what="retry",
            )
        finally:
            b.stop()


def test_basic_auth_backend_gets_its_webhooks(ls, tmp_path):
    api = LS(ls)
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake, basic_auth_user="ls-user", basic_auth_pass="s3cret")
        try:
            pid, rec_of = api.new_project("basic auth", mof_records()[430:440])
            r = api.connect(
                pid,
                b.url,
                auth_method="BASIC_AUTH",
                basic_auth_user="ls-user",
                basic_auth_pass="s3cret",
            )
            assert r.status_code == 201, r.text
            assert b.status(pid)["queue"] == {
                "selected": 10,
                "pushed": 10,
                "reserve": RESERVE,
            }  # budget 6 and a reserve of 4: every task
            # LS creates the backend's webhook without credentials; the backend adds them.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                hooks = [
                    w for w in api.get("/api/webhooks/", project=pid) if w["url"].startswith(b.url)
                ]
                if hooks and all(
                    (w.get("headers") or {}).get("Authorization", "").startswith("Basic ")
                    and (w.get("headers") or {}).get(HEADER)
                    for w in hooks
                ):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"webhook not authorized: {hooks}")
            task = api.next(pid)
            api.annotate(task["id"], rec_of[task["id"]])
            b.wait_for(pid, lambda st: st["annotated_tasks"] == 1, timeout=10, what="the webhook")
            assert requests.get(f"{b.url}/health").status_code == 401
        finally:
            b.stop()


def test_personal_access_token(ls, tmp_path):
    pat = requests.post(
        f"{ls.url}/api/token/", headers={"Authorization": f"Token {ls.token}"}
    ).json()["token"]  # a JWT refresh token
    assert pat.count(".") == 2
    api = LS(ls)
    with FakeOpenAI() as fake:
        b = Backend(tmp_path, ls, fake, key=pat)
        try:
            pid, _ = api.new_project("pat", mof_records()[400:420])
            assert api.connect(pid, b.url).status_code == 201
            assert b.status(pid)["queue"] == {
                "selected": BUDGET + RESERVE,
                "pushed": BUDGET + RESERVE,
                "reserve": RESERVE,
            }
            assert api.project(pid)["sampling"] == "Uncertainty sampling"
        finally:
            b.stop()


def test_cli_prelabels_a_project_now(ls, tmp_path, monkeypatch, capsys):
    """``alllabel prelabel --project N`` pre-annotates every unannotated task now, whatever the budget."""
    import json

    from alllabel.cli import main

    api = LS(ls)
    records = mof_records()[20:35]
    with FakeOpenAI(oracle(records)) as fake:
        pid, rec_of = api.new_project("cli", records)
        first = list(rec_of)[:2]
        for t in first:  # two human annotations, far below the budget
            api.annotate(t, rec_of[t])
        for name, value in {
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "k",
            "ALLABEL_STATE_DIR": str(tmp_path / "state"),
            "ALLABEL_MODEL_VERSION": MV,
            "ALLABEL_BUDGET": "10",
        }.items():
            monkeypatch.setenv(name, value)
        assert main(["prelabel", "--project", str(pid)]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["prelabels"]["done"] == status["prelabels"]["pushed"] == len(records) - 2
        preds = per_task(api.predictions(pid))
        assert set(preds) == set(rec_of) - set(first) and all(
            len(v) == 1 and v[0].result for v in preds.values()
        )
