"""The bulk pre-annotation through the backend, against a real Label Studio and the fake LLM.

What a team trusts with its money (issue 9) and what real corpora need (issue 10): the quality
check before any bulk call, holds, the cost cap, re-runs in place, the Batch API across a restart,
near-duplicates, length outliers and long texts.
"""

import json
import time

import pytest

from alllabel.llm.tokens import TokenCounter
from alllabel.selection.duplicates import find_duplicates
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_label_studio import BUDGET, LS, Backend, gold_spans, oracle, per_task


@pytest.fixture(scope="module")
def ls(label_studio):
    return label_studio


def annotate_budget(api, b, pid, rec_of):
    queue = b.orch.state.queue(pid)[:BUDGET]
    for q in queue:
        api.annotate(q.task_id, rec_of[q.task_id])
    return [q.task_id for q in queue]


def inputs(fake):
    return [
        req["messages"][-1]["content"].split("Input:\n", 1)[1]
        for req in fake.requests
        if "messages" in req
    ]


def test_the_quality_check_comes_before_any_bulk_call(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[40:70]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake, min_f1=0.5)
        try:
            pid, rec_of = api.new_project("quality first", records)
            assert api.connect(pid, b.url).status_code == 201
            human = annotate_budget(api, b, pid, rec_of)
            st = b.wait_for(pid, lambda st: st["phase"] == "done", what="the run")
            quality = st["run"]["quality"]
            assert (
                quality["tasks"] == BUDGET
                and quality["f1"] > 0.9
                and set(quality["per_label"]) >= {"solvent", "linker"}
            )
            assert st["run"]["estimate"]["tasks"] > 0 and st["run"]["estimate"]["cost_usd"] > 0
            # The leave-one-out calls (one per human-annotated task) were made before the bulk ones.
            sent = inputs(fake)
            human_texts = {rec_of[t]["text"] for t in human}
            assert set(sent[:BUDGET]) == human_texts and not human_texts & set(sent[BUDGET:])
        finally:
            b.stop()


def test_a_quality_below_the_minimum_holds_the_run(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[70:100]
    with FakeOpenAI(lambda req: '{"entities": []}') as fake:  # an LLM that finds nothing
        b = Backend(tmp_path, ls, fake, min_f1=0.9)
        try:
            pid, rec_of = api.new_project("quality hold", records)
            assert api.connect(pid, b.url).status_code == 201
            annotate_budget(api, b, pid, rec_of)
            st = b.wait_for(
                pid, lambda st: "below the minimum" in (st["message"] or ""), what="the hold"
            )
            time.sleep(3)
            assert len(fake.requests) == BUDGET  # the check only: no bulk call
            assert (
                st["run"]["quality"]["f1"] < 0.9
                and "ALLABEL_MIN_F1" in st["run"]["hold"]
                and st["phase"] == "prelabeling"
            )
            assert not any(p.result for p in api.predictions(pid))
        finally:
            b.stop()


def test_manual_start_waits_for_start_training(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[130:160]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake, prelabel_start="manual")
        try:
            pid, rec_of = api.new_project("manual start", records)
            assert api.connect(pid, b.url).status_code == 201
            human = annotate_budget(api, b, pid, rec_of)
            st = b.wait_for(
                pid,
                lambda st: "waiting for Start Training" in (st["message"] or ""),
                what="the hold",
            )
            assert st["run"]["estimate"]["tasks"] > 0 and "US$" in st["message"]
            time.sleep(3)
            assert len(fake.requests) == BUDGET  # the quality check only
            api.start_training(pid)
            b.wait_for(pid, lambda st: st["phase"] == "done", what="the run after Start Training")
            b.idle(pid)
            preds = per_task(api.predictions(pid))
            assert all(len(preds[t]) == 1 and preds[t][0].result for t in rec_of if t not in human)
        finally:
            b.stop()


def test_start_training_during_the_budget_approves_nothing(ls, tmp_path):
    """Approval belongs to the run it approves: a Start Training before the estimate is shown
    does not pre-approve the run; one after it starts the run."""
    api = LS(ls)
    records = mof_records()[160:190]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake, prelabel_start="manual")
        try:
            pid, rec_of = api.new_project("approval", records)
            assert api.connect(pid, b.url).status_code == 201
            queue = b.orch.state.queue(pid)[:BUDGET]
            for q in queue[:-1]:
                api.annotate(q.task_id, rec_of[q.task_id])
            api.start_training(pid)  # during the budget: restores settings, approves nothing
            b.wait_for(pid, lambda st: st["annotated_tasks"] == BUDGET - 1, what="annotations")
            api.annotate(queue[-1].task_id, rec_of[queue[-1].task_id])
            st = b.wait_for(
                pid,
                lambda st: "waiting for Start Training" in (st["message"] or ""),
                what="the hold",
            )
            time.sleep(3)
            assert len(fake.requests) == BUDGET  # the quality check only: no bulk call
            assert st["run"]["hold_kind"] == "manual" and "approved" not in st["run"]
            api.start_training(pid)  # after the estimate was shown: this one approves it
            b.wait_for(pid, lambda st: st["phase"] == "done", what="the run after Start Training")
            assert len(fake.requests) > BUDGET
        finally:
            b.stop()


def test_the_cost_cap_stops_the_run_and_raising_it_resumes(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[160:190]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake, max_cost_usd=0.05, quality_check=False)
        try:
            pid, rec_of = api.new_project("cost cap", records)
            assert api.connect(pid, b.url).status_code == 201
            human = annotate_budget(api, b, pid, rec_of)
            st = b.wait_for(pid, lambda st: "cost cap" in (st["message"] or ""), what="the cap")
            b.idle(pid)
            st = b.status(pid)
            bought = len(fake.requests)
            assert (
                0 < st["prelabels"]["done"] < len(records) - BUDGET
                and st["run"]["spent_usd"] <= 0.05
            )
            assert "ALLABEL_MAX_COST_USD" in st["run"]["hold"]
        finally:
            b.stop()
        b2 = Backend(
            tmp_path, ls, fake, max_cost_usd=10.0, quality_check=False, port=b.port
        )  # the cap raised, the backend restarted
        try:
            b2.wait_for(pid, lambda st: st["phase"] == "done", what="the rest of the run")
            b2.idle(pid)
            done = b2.status(pid)["prelabels"]["done"]
            assert (
                len(fake.requests) - bought == done - st["prelabels"]["done"]
            )  # only the held tasks were bought
            preds = per_task(api.predictions(pid))
            assert all(len(preds[t]) == 1 and preds[t][0].result for t in rec_of if t not in human)
        finally:
            b2.stop()


def test_a_model_change_is_redone_in_place_on_start_training(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[190:215]
    answer = oracle(records)

    def respond(req):  # the new model finds only the first entity
        ents = json.loads(answer(req))["entities"]
        return json.dumps({"entities": ents[:1] if req["model"] == "gpt-4o-mini" else ents})

    with FakeOpenAI(respond) as fake:
        b = Backend(tmp_path, ls, fake, quality_check=False)
        try:
            pid, rec_of = api.new_project("re-run", records)
            assert api.connect(pid, b.url).status_code == 201
            human = set(annotate_budget(api, b, pid, rec_of))
            b.wait_for(pid, lambda st: st["phase"] == "done", what="the first run")
            b.idle(pid)
            before = {p.task: p for p in api.predictions(pid)}
        finally:
            b.stop()
        b2 = Backend(
            tmp_path, ls, fake, quality_check=False, llm={"model": "gpt-4o-mini"}, port=b.port
        )
        try:
            b2.idle(pid)
            assert not any(
                r["model"] == "gpt-4o-mini" for r in fake.requests
            )  # nothing is redone (paid) unasked
            api.start_training(pid)
            b2.wait_for(
                pid,
                lambda st: st.get("run", {}).get("stale", {}).get("tasks"),
                what="the stale report",
            )
            b2.wait_for(
                pid,
                lambda st: all(
                    (p.version or {}).get("model") == "gpt-4o-mini"
                    for t, p in b2.orch.state.predictions(pid).items()
                    if p.result is not None and p.annotator != "near-duplicate-projection"
                ),
                what="the re-run",
            )
            b2.idle(pid)
            after = per_task(api.predictions(pid))
            assert set(after) == set(before) and all(len(v) == 1 for v in after.values())
            redone = [
                t
                for t in rec_of
                if t not in human
                and b2.orch.state.predictions(pid)[t].annotator == "llm-gpt-4o-mini"
            ]
            assert redone
            for t in redone:  # updated in place: the same prediction, new content
                assert (
                    after[t][0].id == before[t].id
                    and len(after[t][0].result) <= 1 < len(before[t].result) + 1
                )
            for t in human:  # human work untouched
                assert after[t][0].id == before[t].id and after[t][0].result == before[t].result
        finally:
            b2.stop()


def test_a_batch_api_run_survives_a_backend_restart(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[215:240]
    with FakeOpenAI(oracle(records), batch_timing=(1.0, 4.0)) as fake:
        b = Backend(tmp_path, ls, fake, quality_check=False, llm={"batch": True, "batch_poll": 0.5})
        try:
            pid, rec_of = api.new_project("batch", records)
            assert api.connect(pid, b.url).status_code == 201
            human = annotate_budget(api, b, pid, rec_of)
            b.wait_for(pid, lambda st: "Batch API" in (st["message"] or ""), what="the batch")
            assert len(fake.batches) == 1
        finally:
            b.stop()  # the backend goes down while the batch runs
        b2 = Backend(
            tmp_path,
            ls,
            fake,
            quality_check=False,
            llm={"batch": True, "batch_poll": 0.5},
            port=b.port,
        )
        try:
            b2.wait_for(
                pid, lambda st: st["phase"] == "done", timeout=90, what="the batch collected"
            )
            b2.idle(pid)
            assert (
                fake.uploads == 1 and len(fake.batches) == 1
            )  # picked up by its id, not sent again
            preds = per_task(api.predictions(pid))
            assert all(len(preds[t]) == 1 and preds[t][0].result for t in rec_of if t not in human)
        finally:
            b2.stop()


PREFIX = "Run 🧪👩‍🔬 𝛼\r\n"


def test_duplicates_outliers_and_a_long_text(ls, tmp_path):
    """No near-duplicate pair and no extreme-length task offered to humans; a copy of an annotated task
    gets its annotation projected (no LLM call); a 150,000-character task is pre-annotated in windows
    (no prompt above the budget) merged at exact offsets."""
    api = LS(ls)
    base = [dict(r) for r in mof_records()[240:276]]
    copies = [
        {**r, "text": r["text"] + " "} for r in base[:6]
    ]  # one character more: same entities, same offsets
    parts = mof_records()[300:560]
    long_text, long_entities = "", []
    for r in parts:
        shift = len(long_text) + len(PREFIX)
        long_entities += [
            {"start": e["start"] + shift, "end": e["end"] + shift, "label": e["label"]}
            for e in r["entities"]
        ]
        long_text += PREFIX + r["text"] + "\r\n\r\n"
    assert len(long_text) > 150_000
    known = {
        (e["label"], r["text"][e["start"] : e["end"]]) for r in base + parts for e in r["entities"]
    }

    def respond(req):  # finds every known entity string in whatever it is given (a window, too)
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        return json.dumps(
            {
                "entities": [
                    {"label": lab, "text": s}
                    for lab, s in sorted(known)
                    for _ in range(text.count(s))
                ]
            }
        )

    with FakeOpenAI(respond) as fake:
        # Streamed (the default on loopback, said here so it stays so): its oracle lists "L" and
        # "1" dozens of times in a row, which the loop rule once cut (tests/test_llm_stream.py).
        llm = {"max_prompt_tokens": 4000, "stream": True}
        b = Backend(tmp_path, ls, fake, quality_check=False, llm=llm)
        try:
            records = base + copies + [{"text": long_text, "entities": long_entities}]
            pid, rec_of = api.new_project("real corpus", records)
            assert api.connect(pid, b.url).status_code == 201
            queue = [q.task_id for q in b.orch.state.queue(pid)]
            long_id = next(t for t, r in rec_of.items() if r["text"] == long_text)
            assert long_id not in queue  # the length outlier is not offered to humans
            qtexts = [rec_of[t]["text"] for t in queue]
            assert (
                find_duplicates(qtexts, threshold=0.8).within(range(len(qtexts))) == []
            )  # no near-duplicate pair
            assert b.status(pid)["run"]["screening"]["near_duplicates"] >= len(copies)

            originals = [t for t, r in rec_of.items() if r in base[:6]][:3]
            human = []
            for t in originals + [
                t for t in queue if t not in originals
            ]:  # three originals first, then the queue
                if len(human) == BUDGET:
                    break
                api.annotate(t, rec_of[t])
                human.append(t)
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=180, what="the run")
            b.idle(pid)
            state = b.orch.state.predictions(pid)
            preds = per_task(api.predictions(pid))
            sent = inputs(fake)
            annotated_texts = {rec_of[t]["text"] for t in human}
            projected = [
                t for t, r in rec_of.items() if r in copies and r["text"][:-1] in annotated_texts
            ]
            assert projected
            for t in projected:  # the human annotation, on the copy's own text, without an LLM call
                src = next(r for r in base if r["text"] == rec_of[t]["text"][:-1])
                assert (
                    state[t].annotator == "near-duplicate-projection"
                    and rec_of[t]["text"] not in sent
                )
                got = {
                    (x["value"]["start"], x["value"]["end"], x["value"]["labels"][0])
                    for x in preds[t][0].result
                }
                nested = {(s["start"], s["end"], s["label"]) for s in gold_spans(src)}
                assert got and got <= nested
            # The long task: windows within the prompt budget, merged at exact offsets.
            counter = TokenCounter("gpt-4o")
            assert max(counter.messages(req["messages"]) for req in fake.requests) <= 4000
            windows = [s for s in sent if s in long_text and s != long_text]
            assert len(windows) > 10 and long_text not in sent
            (p,) = preds[long_id]
            regions = [
                (x["value"]["start"], x["value"]["end"], x["value"]["text"]) for x in p.result
            ]
            assert len(regions) > 100 and all(long_text[s:e] == text for s, e, text in regions)
            assert {(s, e) for s, e, _ in regions} & {(e["start"], e["end"]) for e in long_entities}
        finally:
            b.stop()


def test_a_rejected_llm_key_shows_on_the_model_in_label_studio(ls, tmp_path):
    """An endpoint refusing every call (401) blocks the run; /setup says so, which Label Studio shows
    as the model's state (Error) with our message, and retrying stops hammering until it is fixed."""
    api = LS(ls)
    records = mof_records()[560:590]
    with FakeOpenAI() as fake:
        fake.script = [{"status": 401, "message": "Incorrect API key provided"}] * 1000
        b = Backend(tmp_path, ls, fake, quality_check=False)
        try:
            pid, rec_of = api.new_project("bad llm key", records)
            assert api.connect(pid, b.url).status_code == 201
            annotate_budget(api, b, pid, rec_of)
            st = b.wait_for(pid, lambda st: st.get("run", {}).get("blocked"), what="the block")
            assert "check OPENAI_API_KEY" in st["run"]["blocked"]
            (ml,) = api.get("/api/ml/", project=pid)  # the Model settings page: LS calls /setup
            assert (
                ml["readable_state"] == "Error"
                and "pre-annotation is blocked" in ml["error_message"]
                and "OPENAI_API_KEY" in ml["error_message"]
            )
            fake.script = []  # the key is fixed; Start Training retries at once
            api.start_training(pid)
            b.wait_for(pid, lambda st: st["phase"] == "done", what="the run after the fix")
            assert api.get("/api/ml/", project=pid)[0]["readable_state"] == "Connected"
        finally:
            b.stop()


def test_a_killed_backend_leaves_no_second_process_behind(ls, tmp_path):
    """kill -9 of gunicorn's master mid-run: its worker must stop at once (not finish the run beside
    the new backend, which would push every prediction twice); the new backend finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import requests

    from tests.label_studio import free_port

    root = Path(__file__).resolve().parents[1]
    api = LS(ls)
    records = mof_records()[590:650]
    with FakeOpenAI(oracle(records)) as fake:
        fake.latency = 1.0  # the run (about 30 s) outlasts the 20 s the old worker gets to leave
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "k",
            "ALLABEL_STATE_DIR": str(tmp_path / "state"),
            "ALLABEL_BUDGET": str(BUDGET),
            "ALLABEL_MODEL_VERSION": "alllabel-e2e",
            "ALLABEL_QUALITY_CHECK": "0",
            "ALLABEL_SYNC_INTERVAL": "2",
            "ALLABEL_LLM_CONCURRENCY": "2",
        }
        env.pop("BASIC_AUTH_USER", None)
        log = (tmp_path / "backend.log").open("a")

        def start():
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "1",
                    "--threads",
                    "8",
                    "_wsgi:app",
                ],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(url + "/health", timeout=1).ok:
                        return p
                except requests.RequestException:
                    time.sleep(0.2)
            raise AssertionError("backend did not start")

        def status():
            return requests.get(url + "/status", timeout=10).json()["projects"][0]

        master = start()
        new = None
        try:
            pid, rec_of = api.new_project("kill -9", records)
            assert api.connect(pid, url).status_code == 201
            queue = [p.task for p in api.predictions(pid)]
            for t in sorted(
                queue, key=lambda t: [p.score for p in api.predictions(pid) if p.task == t][0]
            )[:BUDGET]:
                api.annotate(t, rec_of[t])
            deadline = time.monotonic() + 60
            while (
                status().get("run", {}).get("progress", {}).get("done", 0) < 4
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            (worker,) = [
                int(x)
                for x in subprocess.run(
                    ["pgrep", "-P", str(master.pid)], capture_output=True, text=True
                ).stdout.split()
            ]
            master.send_signal(signal.SIGKILL)
            master.wait()
            killed = time.monotonic()
            while os.path.exists(f"/proc/{worker}") and time.monotonic() - killed < 20:
                time.sleep(0.1)
            gone = time.monotonic() - killed
            assert not os.path.exists(f"/proc/{worker}"), "the orphaned worker is still running"
            print(f"orphaned worker gone {gone:.1f}s after its master was killed")
            new = start()
            deadline = time.monotonic() + 120
            while status()["phase"] != "done" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert status()["phase"] == "done"
            preds = per_task(api.predictions(pid))
            assert set(preds) == set(rec_of) and all(len(v) == 1 for v in preds.values())
            assert "duplicate prediction" not in (tmp_path / "backend.log").read_text()
        finally:
            for p in (master, new):
                if p is not None and p.poll() is None:
                    p.terminate()
                    p.wait(30)
            log.close()


def test_replies_cut_at_max_tokens_count_against_the_cap_across_retries_and_restarts(ls, tmp_path):
    """Issue 15.5: every reply is cut at ALLABEL_LLM_MAX_TOKENS and billed; failed tasks are
    retried every second for a minute; the endpoint's bill stays under the cap, the spend is
    kept across a restart, and the hold names the cause."""
    api = LS(ls)
    records = mof_records()[220:250]
    cap, prices = 0.08, (2.50, 10.00)  # gpt-4o
    with FakeOpenAI(oracle(records)) as fake:
        fake.truncate = True
        b = Backend(tmp_path, ls, fake, max_cost_usd=cap, llm={"max_tokens": 256})
        try:
            pid, rec_of = api.new_project("cut replies", records)
            assert api.connect(pid, b.url).status_code == 201
            annotate_budget(api, b, pid, rec_of)
            b.wait_for(pid, lambda st: "cost cap" in (st["message"] or ""), what="the cap")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the controller keeps retrying what failed
                assert fake.billed_usd(prices) <= cap
                time.sleep(1)
            st = b.status(pid)
            billed = fake.billed_usd(prices)
            assert len(fake.billed) > BUDGET  # the quality check and some bulk calls were billed
            assert billed <= st["run"]["spent_usd"] <= cap  # every billed call counted
            assert "ALLABEL_LLM_MAX_TOKENS" in st["message"]
            preds = b.orch.state.predictions(pid).values()  # near-duplicates are projected
            assert not any(p.result is not None and p.annotator.startswith("llm-") for p in preds)
        finally:
            b.stop()
        print(f"cut replies: billed US${billed:.4f} in {len(fake.billed)} calls, cap US${cap}")
        b2 = Backend(
            tmp_path, ls, fake, max_cost_usd=cap, llm={"max_tokens": 256}, port=b.port
        )  # restarted: the spend is in the state, the cause still named
        try:
            st = b2.wait_for(pid, lambda st: "cost cap" in (st["message"] or ""), what="the cap")
            time.sleep(5)
            assert fake.billed_usd(prices) <= cap
            assert "ALLABEL_LLM_MAX_TOKENS" in b2.status(pid)["message"]
        finally:
            b2.stop()
