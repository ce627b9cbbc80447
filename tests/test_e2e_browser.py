"""The real Label Studio UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

A person logs in, opens the project and presses "Label All Tasks": the task shown is the ALLabel
queue's first. Once the budget is annotated (through the API), the pre-annotated regions are drawn on
the intended words, in texts where emoji, a mathematical letter and CRLF come before every entity
(Label Studio reads start/end as Unicode code points, as Python's str does). In a <Choices>
project, a task's predicted choice is the one selected when the task is opened.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from alllabel.prelabel.prompt import example_from_spans
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI, gold_responder
from tests.label_studio import PASSWORD, USERNAME
from tests.test_e2e_label_studio import BUDGET, LS, Backend, result_of

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Flags measured to keep Chromium quiet and offline here (measured on this machine kind: they keep it off the network).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PREFIX = "Batch 🧪👩‍🔬 run 𝛼-2\r\n"  # astral emoji, a ZWJ sequence, a mathematical letter, CRLF


def awkward(rec: dict) -> dict:
    """The record with PREFIX before its text: every entity now sits after emoji and CRLF."""
    shift = len(PREFIX)
    ents = [{**e, "start": e["start"] + shift, "end": e["end"] + shift} for e in rec["entities"]]
    text = PREFIX + rec["text"]
    assert all(
        text[e["start"] : e["end"]] == rec["text"][e["start"] - shift : e["end"] - shift]
        for e in ents
    )
    return {**rec, "text": text, "entities": ents}


@pytest.fixture
def browser(tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: scripts/install.sh test installs Debian's chromium"
    )
    profile = Path(tempfile.mkdtemp(prefix="alllabel-chromium-"))  # a fresh --user-data-dir
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()  # Playwright stops the browser process it started
            shutil.rmtree(profile, ignore_errors=True)


def test_label_all_tasks_and_prelabels_in_the_browser(label_studio, browser, tmp_path):
    ls = label_studio
    records = [awkward(r) for r in mof_records()[460:480]]
    by_text = {
        r["text"]: example_from_spans(
            r["text"], [{k: e[k] for k in ("start", "end", "label")} for e in r["entities"]]
        ).entities
        for r in records
    }
    shots = Path(
        os.environ.get("ALLABEL_SCREENSHOTS") or tmp_path
    )  # set it to keep the screenshots
    shots.mkdir(parents=True, exist_ok=True)
    with FakeOpenAI(gold_responder(by_text)) as fake:
        b = Backend(tmp_path, ls, fake)
        api = LS(ls)
        try:
            pid, rec_of = api.new_project("browser", records)
            assert api.connect(pid, b.url).status_code == 201
            b.idle(pid)
            queue = [q.task_id for q in b.orch.state.queue(pid)]

            page = browser.new_page()
            page.goto(f"{ls.url}/user/login/")
            page.fill("input[name=email]", USERNAME)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/user/login" not in u)
            page.goto(f"{ls.url}/projects/{pid}/data")
            page.get_by_role("button", name="Label All Tasks").click()
            shown = page.locator(".lsf-current-task__task-id")
            shown.wait_for(timeout=60000)
            page.locator(".lsf-htx-richtext").wait_for(timeout=60000)
            page.screenshot(path=str(shots / "label-all-tasks.png"))
            assert int(shown.inner_text().split()[0]) == queue[0]
            assert (
                rec_of[queue[0]]["text"].split("\r\n")[1][:60]
                in page.locator(".lsf-htx-richtext").inner_text()
            )

            # The budget, annotated through the API; the backend then pre-annotates the rest.
            for tid in queue[:BUDGET]:
                r = requests.post(
                    f"{ls.url}/api/tasks/{tid}/annotations/",
                    headers={"Authorization": f"Token {ls.token}"},
                    json={"result": result_of(rec_of[tid])},
                )
                assert r.status_code == 201
            b.wait_for(pid, lambda st: st["phase"] == "done", what="pre-annotation")
            b.idle(pid)
            preds = {p.task: p for p in api.predictions(pid) if p.task not in queue}
            tid, pred = max(
                preds.items(), key=lambda kv: len(kv[1].result)
            )  # the task with the most regions
            text = rec_of[tid]["text"]
            wanted = sorted(text[r["value"]["start"] : r["value"]["end"]] for r in pred.result)
            assert len(wanted) >= 3 and text.index("\r\n") < min(
                r["value"]["start"] for r in pred.result
            )

            tab = api.get("/api/dm/views/", project=pid)[0]["id"]
            page.goto(f"{ls.url}/projects/{pid}/data?tab={tab}&task={tid}")
            page.locator(".lsf-htx-richtext .htx-highlight").first.wait_for(timeout=60000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "prelabels.png"))
            drawn = page.eval_on_selector_all(
                ".lsf-htx-richtext .htx-highlight", "els => els.map(e => e.textContent)"
            )
            # Exactly the intended words; UTF-16 offsets would be 4 code units off (3 astral emoji, 𝛼).
            assert sorted(drawn) == wanted, (tid, drawn)
        finally:
            b.stop()


def test_a_choices_pre_annotation_is_selected_in_the_browser(label_studio, browser, tmp_path):
    """A <Choices> project: once the budget is in, opening a pre-annotated task shows the
    predicted choice selected in the real UI."""
    import json

    from alllabel.text.jsonl import read_jsonl
    from tests.test_e2e_choices import DATA, SINGLE, choices_of

    ls, records = label_studio, read_jsonl(DATA)[200:215]
    gold = {r["text"]: r["choices"][0] for r in records}

    def respond(req):
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        return json.dumps({"choices": {"modulator": gold[text]}})

    with FakeOpenAI(respond) as fake:
        b = Backend(tmp_path, ls, fake)
        api = LS(ls)
        try:
            pid, rec_of = api.new_project("browser choices", records, config=SINGLE)
            assert api.connect(pid, b.url).status_code == 201
            b.idle(pid)
            queue = [q.task_id for q in b.orch.state.queue(pid)]
            for tid in queue[:BUDGET]:
                body = {"result": choices_of(rec_of[tid], "choices", "modulator")}
                assert api.send("POST", f"/api/tasks/{tid}/annotations/", body).status_code == 201
            b.wait_for(pid, lambda st: st["phase"] == "done", what="classification")
            b.idle(pid)
            preds = {p.task: p for p in api.predictions(pid) if p.task not in queue[:BUDGET]}
            # A task predicted "with modulator" (not the first choice's default look).
            tid = next(
                t
                for t, p in preds.items()
                if p.result and p.result[0]["value"]["choices"] == ["with modulator"]
            )

            page = browser.new_page()
            page.goto(f"{ls.url}/user/login/")
            page.fill("input[name=email]", USERNAME)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/user/login" not in u)
            tab = api.get("/api/dm/views/", project=pid)[0]["id"]
            page.goto(f"{ls.url}/projects/{pid}/data?tab={tab}&task={tid}")
            page.locator("input[type=radio]:checked").first.wait_for(timeout=60000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "choices.png"))
            checked = page.eval_on_selector_all(
                # the labeling panel's radios, not the data manager's list/grid toggle
                "input[type=radio]:checked:not(.lsf-radio-group-dm__input)",
                "els => els.map(e => e.closest('label').innerText.trim())",
            )
            checked = [t.split("[")[0] for t in checked]  # the UI adds the hotkey: "...[1]"
            assert checked == ["with modulator"], checked
        finally:
            b.stop()
