"""A real Label Studio 1.23 (PostgreSQL) with <Choices> projects, alone or with <Labels>: the
ALLabel queue, then one prediction of our version on every remaining task, from one call per task
(the real openai client, fake LLM)."""

import json
import math
from pathlib import Path

import pytest

from alllabel.cli import main
from alllabel.prelabel.prompt import example_from_spans
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


def oracle(records, field, name):
    gold = {r["text"]: r[field] for r in records}

    def respond(req):
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        single = field == "choices"
        return json.dumps({"choices": {name: gold[text][0] if single else gold[text]}})

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
    with FakeOpenAI(oracle(records, field, name), logprob=math.log(0.9)) as fake:
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
            assert list(fmt) == ["choices"] and list(fmt["choices"]["properties"]) == [name]
            status = b.status(pid)
            assert status["run"]["quality"]["choices"][name]["accuracy"] == 1.0
            assert status["prelabels"]["done"] == len(rest)
        finally:
            b.stop()


def test_labels_with_choices_get_the_queue_then_one_prediction_with_spans_and_the_choice(
    ls, tmp_path
):
    """Issue 19: a <Labels> + two <Choices> project. The queue is ``alllabel select``'s order; after
    the budget every remaining task has exactly one prediction of our version, made by one call,
    holding its span regions and a choices region per group, each with its own from_name."""
    from scripts.derive_classification import derive
    from tests.data import mof_records
    from tests.test_e2e_label_studio import CONFIG, gold_spans, result_of

    groups = [x[x.index("<Choices") : x.index("</View>")] for x in (SINGLE, MULTIPLE)]
    config = CONFIG.replace("</View>", "".join(groups) + "</View>")
    records = [{**r, **derive(r)} for r in mof_records()[300:360] if r["entities"]][:N]
    answers = {
        r["text"]: {
            "entities": example_from_spans(r["text"], gold_spans(r)).entities,
            "choices": {"modulator": r["choices"][0], "quantities": r["quantities"]},
        }
        for r in records
    }

    def respond(req):
        return json.dumps(answers[req["messages"][-1]["content"].split("Input:\n", 1)[1]])

    with FakeOpenAI(respond, logprob=math.log(0.9)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            api = LS(ls)
            pid, rec_of = api.new_project("labels + choices", records, config=config)
            assert api.connect(pid, b.url).status_code == 201
            assert b.status(pid)["warnings"] == []  # nothing left to annotators
            ids = sorted(rec_of)
            queue = [q.task_id for q in b.orch.state.queue(pid)]
            assert queue[:BUDGET] == [ids[i] for i in cli_order(records, tmp_path)]
            served = []
            for _ in range(BUDGET):
                task = api.next(pid)
                served.append(task["id"])
                rec = rec_of[task["id"]]
                chosen = choices_of(rec, "choices", "modulator")
                chosen += choices_of(rec, "quantities", "quantities")
                body = {"result": result_of(rec) + chosen}
                r = api.send("POST", f"/api/tasks/{task['id']}/annotations/", body)
                assert r.status_code == 201, r.text
            assert served == queue[:BUDGET]
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=120, what="pre-annotation")
            b.idle(pid)
            rest = [t for t in ids if t not in served]
            asked = [q["messages"][-1]["content"].split("Input:\n", 1)[1] for q in fake.requests]
            assert len(asked) == len(set(asked))  # one call per task (the check's included)
            preds = per_task(api.predictions(pid))  # every prediction is of our model version
            for t in rest:
                (p,) = preds[t]  # exactly one
                spans = [r for r in p.result if r["type"] == "labels"]
                chosen = {r["from_name"]: r for r in p.result if r["type"] == "choices"}
                assert spans and {r["from_name"] for r in spans} == {"label"}
                got = {
                    (r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in spans
                }
                made = b.orch.state.predictions(pid)[t].annotator
                gold = {(s["start"], s["end"], s["label"]) for s in gold_spans(rec_of[t])}
                assert got <= gold or made == "near-duplicate-projection", (t, made, got - gold)
                quantities = rec_of[t]["quantities"]
                assert set(chosen) == ({"modulator", "quantities"} if quantities else {"modulator"})
                assert chosen["modulator"]["value"]["choices"] == rec_of[t]["choices"]
                assert all(r["to_name"] == "text" and 0 < r["score"] <= 1 for r in chosen.values())
                if quantities:  # a group that chose nothing has no region
                    assert chosen["quantities"]["value"]["choices"] == quantities
                assert 0 < p.score <= 1
            system = fake.requests[-1]["messages"][0]["content"]
            assert 'Category group "modulator"' in system and '"entities"' in system
            assert 'Category group "quantities" (choose every category that applies' in system
            shown = [
                json.loads(m["content"])
                for m in fake.requests[-1]["messages"]
                if m["role"] == "assistant"
            ]
            assert shown and all(d["choices"]["modulator"] and "entities" in d for d in shown)
            q = b.status(pid)["run"]["quality"]
            assert q["choices"]["modulator"]["accuracy"] == 1.0 and q["gate_f1"] is not None
            assert q["choices"]["quantities"]["accuracy"] == 1.0
        finally:
            b.stop()
