"""The status page in the real Chromium during a real run (Label Studio 1.23, the fake LLM).

The LLM answers the quality check and a few bulk calls, then waits (a held gate), so the run stays
in the middle while the page is read: its figures must be /status's. Set ALLABEL_SCREENSHOTS to keep
the screenshot (the README's docs/status-page.png is taken so).
"""

import base64
import os
import threading
import time
from pathlib import Path

import requests

from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_browser import browser  # noqa: F401 - the fixture
from tests.test_e2e_bulk import annotate_budget
from tests.test_e2e_label_studio import BUDGET, LS, Backend, oracle

USER, PASS = "lead", "pw-page-123"
ANSWERED = BUDGET + 5  # the quality check's calls, then five bulk calls; the rest wait


def gated(respond, gate: threading.Event, answered: int = ANSWERED):
    """``respond``, but calls after the first ``answered`` wait for ``gate``."""
    calls = []

    def answer(request):
        calls.append(1)
        if len(calls) > answered:
            gate.wait(120)
        return respond(request)

    return answer


def usd(x):
    return f"US${x:.4f}"


def pct(x):
    return f"{100 * x:.1f}"


def expected(st: dict) -> dict:
    """The page's figures, computed here from /status."""
    run, q = st["run"], st["run"]["quality"]
    out = {
        "phase": st["phase"],
        "annotated_tasks": str(st["annotated_tasks"]),
        "budget": str(st["budget"]),
        "annotated_from_queue": str(st["annotated_from_queue"]),
        "annotated_outside_queue": str(st["annotated_tasks"] - st["annotated_from_queue"]),
        "queue.selected": str(st["queue"]["selected"]),
        "queue.pushed": str(st["queue"]["pushed"]),
        "queue.reserve": str(st["queue"]["reserve"]),
        "prelabels.done": str(st["prelabels"]["done"]),
        "prelabels.failed": str(st["prelabels"]["failed"]),
        "run.spent_usd": usd(run["spent_usd"]),
        "run.cap_usd": usd(run["cap_usd"]),
        "run.estimate.tasks": str(run["estimate"]["tasks"]),
        "run.estimate.prompt_tokens": str(run["estimate"]["prompt_tokens"]),
        "run.estimate.cost_usd": usd(run["estimate"]["cost_usd"]),
        "run.estimate.batch_cost_usd": usd(run["estimate"]["batch_cost_usd"]),
        "run.progress.done": str(run["progress"]["done"]),
        "run.progress.total": str(run["progress"]["total"]),
        "run.quality.f1": pct(q["f1"]),
    }
    for label, m in q["per_label"].items():
        out[f"run.quality.per_label.{label}.f1"] = pct(m["f1"])
    return out


def settled(b, pid):
    """/status once the run stopped moving (the gate holds the rest)."""
    before = None
    for _ in range(120):
        st = b.status(pid)
        pr = (st.get("run") or {}).get("progress") or {}
        now = (pr.get("done"), pr.get("failed"), st["run"].get("spent_usd") if pr else None)
        if pr.get("done") and now == before:
            return st
        before = now
        time.sleep(1)
    raise AssertionError(f"the run did not settle: {b.status(pid)}")


def test_the_status_page_in_chromium_during_a_run(label_studio, browser, tmp_path):  # noqa: F811
    ls, api = label_studio, LS(label_studio)
    records = mof_records()[200:230]
    gate = threading.Event()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASS}".encode()).decode()}
    shots = Path(os.environ.get("ALLABEL_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with FakeOpenAI(gated(oracle(records), gate)) as fake:
        b = Backend(
            tmp_path, ls, fake, basic_auth_user=USER, basic_auth_pass=PASS, max_cost_usd=2.0,
            llm={"timeout": 300},
        )  # fmt: skip
        try:
            pid, rec_of = api.new_project("status page", records)
            r = api.connect(
                pid, b.url, auth_method="BASIC_AUTH", basic_auth_user=USER, basic_auth_pass=PASS
            )
            assert r.status_code == 201, r.text
            # On a loaded machine the queue may come after the connect dialog's 3 s.
            b.wait_for(pid, lambda st: st["queue"]["pushed"] >= BUDGET, what="the queue")
            annotate_budget(api, b, pid, rec_of)
            st = settled(b, pid)
            assert st["phase"] == "prelabeling" and 0 < st["run"]["progress"]["done"] < 24

            assert requests.get(f"{b.url}/").status_code == 401  # the credentials of /status
            page = browser.new_page()
            page.set_extra_http_headers(auth)
            page.goto(f"{b.url}/")
            shown = page.eval_on_selector_all(
                "[data-k]", "els => Object.fromEntries(els.map(e => [e.dataset.k, e.textContent]))"
            )
            page.screenshot(path=str(shots / "status-page.png"), full_page=True)
            api_st = requests.get(f"{b.url}/status", headers=auth).json()["projects"][0]
            want = expected(api_st)
            assert {k: shown.get(k) for k in want} == want
            assert shown["run.progress.rate_per_min"] not in ("–", "None")
            assert api_st["run"]["progress"]["rate_per_min"] > 0
            # It refreshes itself while the run goes.
            page.wait_for_event("load", timeout=15000)

            gate.set()
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=120, what="the run's end")
            b.idle(pid)
            page.reload()
            assert page.locator('[data-k="phase"]').inner_text() == "done"
            assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "30"
        finally:
            gate.set()
            b.stop()
