"""A real Label Studio 1.23 (PostgreSQL) with two <Labels> groups on one <Text>: one prompt per
task answers both, and every region goes back to its own group (fake LLM, real openai client)."""

import pytest

from tests.data import mof_records
from tests.fake_openai import FakeOpenAI
from tests.test_e2e_label_studio import BUDGET, LABELS, LS, Backend, gold_spans, oracle, per_task

MATERIALS = ["compound name", "linker", "metal source", "modulator", "solvent"]
CONDITIONS = [lab for lab in LABELS if lab not in MATERIALS]
CONFIG = (
    '<View><Text name="text" value="$text"/><Labels name="materials" toName="text">'
    + "".join(f'<Label value="{lab}"/>' for lab in MATERIALS)
    + '</Labels><Labels name="conditions" toName="text">'
    + "".join(f'<Label value="{lab}"/>' for lab in CONDITIONS)
    + "</Labels></View>"
)


@pytest.fixture(scope="module")
def ls(label_studio):
    return label_studio


def group_of(label: str) -> str:
    return "materials" if label in MATERIALS else "conditions"


def grouped_result(rec):
    return [
        {
            "from_name": group_of(s["label"]),
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


def test_two_labels_groups_are_pre_annotated_in_one_call_each_region_in_its_group(ls, tmp_path):
    api = LS(ls)
    records = mof_records()[100:124]
    with FakeOpenAI(oracle(records)) as fake:
        b = Backend(tmp_path, ls, fake)
        try:
            pid, rec_of = api.new_project("two label groups", records, config=CONFIG)
            assert api.connect(pid, b.url).status_code == 201
            assert b.status(pid)["warnings"] == []
            served = []
            for _ in range(BUDGET):
                task = api.next(pid)
                served.append(task["id"])
                body = {"result": grouped_result(rec_of[task["id"]])}
                r = api.send("POST", f"/api/tasks/{task['id']}/annotations/", body)
                assert r.status_code == 201, r.text
            b.wait_for(pid, lambda st: st["phase"] == "done", timeout=120, what="pre-annotation")
            b.idle(pid)
            rest = [t for t in rec_of if t not in served]
            inputs = [q["messages"][-1]["content"].split("Input:\n", 1)[1] for q in fake.requests]
            asked = [text for text in inputs if text in {rec_of[t]["text"] for t in rest}]
            # One call per task answers both groups (near-duplicates are projected, no call).
            assert len(asked) == len(set(asked)) >= len(rest) - 2
            system = fake.requests[-1]["messages"][0]["content"]
            assert all(f'"{lab}"' in system for lab in LABELS)
            preds = per_task(api.predictions(pid))
            groups = set()
            for t in rest:
                (p,) = [x for x in preds[t] if x.result]
                got = {
                    (
                        r["from_name"],
                        r["value"]["start"],
                        r["value"]["end"],
                        r["value"]["labels"][0],
                    )
                    for r in p.result
                }
                gold = {
                    (group_of(s["label"]), s["start"], s["end"], s["label"])
                    for s in gold_spans(rec_of[t])
                }
                assert got and got <= gold
                groups |= {g for g, *_ in got}
            assert groups == {"materials", "conditions"}
        finally:
            b.stop()
