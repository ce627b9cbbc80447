"""Live accuracy on a real Label Studio 1.23: an annotator corrects pre-annotated tasks (annotations
started from our prediction, some spans changed); /status's live F1 equals the one computed here,
and a live F1 below ALLABEL_MIN_LIVE_F1 holds the rest of the run, on the model's card too."""

import os
import threading
from pathlib import Path

from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_browser import browser  # noqa: F401 - the fixture
from tests.test_e2e_bulk import annotate_budget
from tests.test_e2e_label_studio import BUDGET, LS, Backend, oracle
from tests.test_e2e_page import gated

REVIEWED = 4


def corrected(result: list) -> list:
    """What an annotator makes of our regions: the first one removed, the second relabeled."""
    out = [dict(r, value=dict(r["value"])) for r in result[1:]]
    if out:
        label = out[0]["value"]["labels"][0]
        out[0]["value"]["labels"] = ["solvent" if label != "solvent" else "linker"]
    return out


def span_set(result):
    return {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result}


def f1_of(pairs):
    tp = fp = fn = 0
    for ours, human in pairs:
        o, h = span_set(ours), span_set(human)
        tp, fp, fn = tp + len(o & h), fp + len(o - h), fn + len(h - o)
    p, r = tp / (tp + fp), tp / (tp + fn)
    return round(2 * p * r / (p + r), 4) if p + r else 0.0


def correct_some(api, b, pid) -> list[tuple[list, list]]:
    """An annotator corrects REVIEWED of the LLM's pre-annotations (a near-duplicate gets a
    projection: another version), starting from them as the editor does; (ours, theirs) pairs."""
    by_llm = {t for t, x in b.orch.state.predictions(pid).items() if x.annotator == "llm-gpt-4o"}
    preds = [p for p in api.predictions(pid) if p.task in by_llm and len(p.result) >= 2]
    assert len(preds) >= REVIEWED
    pairs = []
    for p in preds[:REVIEWED]:
        fixed = corrected(p.result)
        r = api.send(
            "POST",
            f"/api/tasks/{p.task}/annotations/",
            {"result": fixed, "parent_prediction": p.id},
        )
        assert r.status_code == 201, r.text
        # What Label Studio 1.23 stores: the link to the prediction the annotation started from.
        assert api.get(f"/api/annotations/{r.json()['id']}")["parent_prediction"] == p.id
        pairs.append((p.result, fixed))
    return pairs


def test_corrections_score_our_pre_annotations_and_a_low_live_f1_holds_the_run(
    label_studio,
    browser,  # noqa: F811
    tmp_path,
):
    ls, api = label_studio, LS(label_studio)
    records = mof_records()[240:270]
    gate = threading.Event()
    with FakeOpenAI(gated(oracle(records), gate, answered=8)) as fake:
        b = Backend(
            tmp_path, ls, fake, quality_check=False, min_live_f1=0.9, min_live_tasks=3,
            llm={"timeout": 300},
        )  # fmt: skip
        try:
            pid, rec_of = api.new_project("live accuracy", records)
            assert api.connect(pid, b.url).status_code == 201
            # On a loaded machine the queue may come after the connect dialog's 3 s.
            b.wait_for(pid, lambda st: st["queue"]["pushed"] >= BUDGET, what="the queue")
            annotate_budget(api, b, pid, rec_of)
            b.wait_for(pid, lambda st: st["prelabels"]["pushed"] >= 6, what="pre-annotations")
            pairs = correct_some(api, b, pid)
            st = b.wait_for(
                pid,
                lambda st: st["live_accuracy"]["reviewed_tasks"] == REVIEWED,
                what="the corrections",
            )
            (version,) = st["live_accuracy"]["versions"].values()
            assert version["tasks"] == REVIEWED and version["f1"] == f1_of(pairs) < 0.9

            gate.set()  # the run goes on and finds the live F1 below the minimum
            st = b.wait_for(
                pid,
                lambda st: (st.get("run") or {}).get("hold_kind") == "min_live_f1",
                timeout=120,
                what="the live F1 hold",
            )
            b.idle(pid)
            st = b.status(pid)
            assert "ALLABEL_MIN_LIVE_F1" in st["run"]["hold"] and st["phase"] == "prelabeling"
            assert st["prelabels"]["done"] < len(records) - BUDGET, st  # the rest waits
            (ml,) = api.get("/api/ml/", project=pid)  # LS calls /setup: the card says why
            assert ml["readable_state"] == "Error" and "ALLABEL_MIN_LIVE_F1" in ml["error_message"]
            # The page shows the live F1 and the hold with what to do (README screenshot).
            page = browser.new_page()
            page.goto(f"{b.url}/")
            assert page.locator('[data-k="run.hold_kind"]').inner_text() == "min_live_f1"
            key = f"live_accuracy.versions.{next(iter(st['live_accuracy']['versions']))}.f1"
            shown = page.locator(f'[data-k="{key}"]').inner_text()
            assert shown == f"{100 * version['f1']:.1f}"
            shots = Path(os.environ.get("ALLABEL_SCREENSHOTS") or tmp_path)
            page.screenshot(path=str(shots / "status-page-held.png"), full_page=True)

            api.start_training(pid)  # reviewed: go on with this version
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=120, what="the run's end")
        finally:
            gate.set()
            b.stop()
