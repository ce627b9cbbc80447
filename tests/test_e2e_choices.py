"""A real Label Studio 1.23 (PostgreSQL) with <Choices> projects: the ALLabel queue, then one
``choices`` prediction of our version on every remaining task (the real openai client, fake LLM)."""

import json
import math
from pathlib import Path

import pytest

from alllabel.cli import main
from alllabel.text.jsonl import read_jsonl, write_jsonl
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_label_studio import BUDGET, LS, RESERVE, Backend, per_task

DATA = Path(__file__).resolve().parents[1] / "examples" / "mof_classify.jsonl"
N = 30
SINGLE = (
    '<View><Text name="text" value="$text"/><Choices name="modulator" toName="text" '
    'choice="single-radio"><Choice value="with modulator" hint="a modulator is added"/>'
    '<Choice value="without modulator"/></Choices></View>'
)
MULTIPLE = (
    '<View><Text name="text" value="$text"/><Choices name="quantities" toName="text" '
    'choice="multiple"><Choice value="metal amount"/><Choice value="linker amount"/>'
    '<Choice value="solvent volume"/></Choices></View>'
)


@pytest.fixture(scope="module")
def ls(label_studio):
    return label_studio


def oracle(records, field):
    gold = {r["text"]: r[field] for r in records}

    def respond(req):
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        single = "choice" in req["messages"][0]["content"] and field == "choices"
        return json.dumps({"choice": gold[text][0]} if single else {"choices": gold[text]})

    return respond


def choices_of(rec, field, name):
    return [
        {
            "from_name": name,
            "to_name": "text",
            "type": "choices",
            "value": {"choices": rec[field]},
        }
    ]


def cli_order(records, tmp_path) -> list[int]:
    path, out = tmp_path / "in.jsonl", tmp_path / "sel.jsonl"
    write_jsonl(path, [{"text": r["text"]} for r in records])
    assert main(["select", str(path), "--budget", str(BUDGET), "-o", str(out), "--quiet"]) == 0
    return [r["index"] for r in read_jsonl(out)]


@pytest.mark.parametrize(
    "config, field, name",
    [(SINGLE, "choices", "modulator"), (MULTIPLE, "quantities", "quantities")],
)
def test_a_choices_project_gets_the_queue_then_choices_predictions(
    ls, tmp_path, config, field, name
):
    api = LS(ls)
    records = read_jsonl(DATA)[:N]
    with FakeOpenAI(oracle(records, field), logprob=math.log(0.9)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project(f"choices {name}", records, config=config)
            assert api.connect(pid, b.url).status_code == 201
            ids = sorted(rec_of)
            queue = [q.task_id for q in b.orch.state.queue(pid)]
            assert len(queue) == BUDGET + RESERVE
            assert queue[:BUDGET] == [ids[i] for i in cli_order(records, tmp_path)]
            served = []
            for _ in range(BUDGET):
                task = api.next(pid)
                served.append(task["id"])
                r = api.send(
                    "POST",
                    f"/api/tasks/{task['id']}/annotations/",
                    {"result": choices_of(rec_of[task["id"]], field, name)},
                )
                assert r.status_code == 201, r.text
            assert served == queue[:BUDGET]
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=120, what="classification")
            b.idle(pid)
            preds = per_task(api.predictions(pid))
            rest = [t for t in ids if t not in served]
            for t in rest:
                (p,) = [x for x in preds[t] if x.result]
                (region,) = p.result
                assert region["from_name"] == name and region["type"] == "choices"
                assert region["value"]["choices"] == rec_of[t][field]
                assert math.isclose(p.score, 0.9, rel_tol=1e-3)
            fmt = fake.requests[-1]["response_format"]["json_schema"]["schema"]["properties"]
            assert ("choices" if field == "quantities" else "choice") in fmt
            status = b.status(pid)
            assert status["run"]["quality"]["accuracy"] == 1.0 and status["prelabels"][
                "done"
            ] == len(rest)
        finally:
            b.stop()


def test_labels_with_choices_pre_annotates_the_spans_and_leaves_the_choices(ls, tmp_path):
    from tests.data import mof_records
    from tests.test_e2e_label_studio import CONFIG, oracle, result_of

    config = CONFIG.replace(
        "</View>", SINGLE[SINGLE.index("<Choices") : SINGLE.index("</View>")] + "</View>"
    )
    records = mof_records()[300:320]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            api = LS(ls)
            pid, rec_of = api.new_project("labels + choices", records, config=config)
            assert api.connect(pid, b.url).status_code == 201
            (warning,) = [w for w in b.status(pid)["warnings"] if "left to annotators" in w]
            assert warning.startswith(
                '<Labels name="label"> is pre-annotated; <Choices name="modulator">'
            )
            served = []
            for _ in range(BUDGET):
                task = api.next(pid)
                served.append(task["id"])
                body = {"result": result_of(rec_of[task["id"]])}
                assert (
                    api.send("POST", f"/api/tasks/{task['id']}/annotations/", body).status_code
                    == 201
                )
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=120, what="pre-annotation")
            b.idle(pid)
            preds = per_task(api.predictions(pid))
            for t in (t for t in rec_of if t not in served):
                (p,) = [x for x in preds[t] if x.result]
                assert {r["from_name"] for r in p.result} == {"label"}  # no choices region
        finally:
            b.stop()
