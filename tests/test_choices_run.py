"""A <Choices> project's run on a real state: offline vote, the cost cap, failures kept per task."""

import json
import threading

from alllabel import BM25Similarity
from alllabel.backend.choices_run import run_choices
from alllabel.backend.label_config import parse_label_config
from alllabel.backend.state import State
from alllabel.llm.client import LLMClient, LLMConfig
from alllabel.prelabel.classify import LLMClassifier, MajorityClassifier
from tests.fake_openai import FakeOpenAI

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="pos"/><Choice value="neg"/></Choices></View>'
)
TEXTS = {  # BM25 weighs the words found in few texts
    1: "sunny morning",
    2: "rainy evening",
    3: "sunny bright noon",
    4: "rainy grey night",
    5: "sunny bright day",
    6: "rainy grey dusk",
    7: "snow wind",
    8: "fog ice",
}
GOLD = {1: "pos", 2: "neg", 3: "pos", 4: "neg"}


class S:
    k, quality_check, max_cost_usd, prelabel_start = 2, True, None, "auto"


def project(tmp_path) -> State:
    st = State(tmp_path)
    st.register(9, CONFIG)
    st.upsert_tasks(9, [(t, text, None, None) for t, text in TEXTS.items()])
    for n, (t, c) in enumerate(GOLD.items(), start=1):
        result = [
            {
                "from_name": "sentiment",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": [c]},
            }
        ]
        st.record_annotation(9, {"id": n, "task": t, "result": result}, st.tick())
    return st


def go(st, classifier, settings=S, order=(5, 6), approved=lambda: True):
    cfg = parse_label_config(CONFIG).classify
    report = {}
    out = run_choices(
        st,
        9,
        cfg,
        classifier,
        BM25Similarity,
        list(order),
        settings=settings,
        report=report.__setitem__,
        saved=lambda: None,
        stop=threading.Event(),
        approved=approved,
    )
    return out, report


def test_the_offline_vote_saves_one_choices_region_per_task_with_quality(tmp_path):
    st = project(tmp_path)
    out, report = go(st, MajorityClassifier(parse_label_config(CONFIG).classify.schema()))
    preds = st.predictions(9)
    assert out.done == 2 and out.failed == 0
    assert preds[5].result[0]["value"] == {"choices": ["pos"]}
    assert preds[6].result[0]["value"] == {"choices": ["neg"]}
    assert preds[5].result[0]["type"] == "choices" and preds[5].version["demos"] == [3, 1]
    assert report["quality"]["accuracy"] == 1.0 and report["quality"]["n"] == 4


def test_the_cost_cap_holds_before_a_call_that_could_exceed_it(tmp_path):
    st = project(tmp_path)
    schema = parse_label_config(CONFIG).classify.schema()
    with FakeOpenAI(lambda req: '{"choice": "pos"}') as fake:
        cfg = LLMConfig(api_key="k", base_url=fake.base_url, model="gpt-4o-mini")
        S2 = type("S2", (S,), {"max_cost_usd": 1e-9, "quality_check": False})
        out, _ = go(st, LLMClassifier(LLMClient(cfg), schema), settings=S2)
        assert fake.requests == []
    assert out.done == 0 and out.hold.kind == "cost_cap" and out.hold.tasks == 2
    assert "cost cap of US$0.00 would be exceeded" in out.hold.reason


def test_a_reply_with_no_valid_choice_is_a_failure_kept_for_a_retry(tmp_path):
    st = project(tmp_path)
    schema = parse_label_config(CONFIG).classify.schema()
    with FakeOpenAI(lambda req: json.dumps({"choice": "maybe"})) as fake:
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        S3 = type("S3", (S,), {"quality_check": False})
        out, _ = go(st, LLMClassifier(client, schema), settings=S3, order=(5,))
    assert out.failed == 1 and st.predictions(9)[5].error == "the reply named no valid choice"


def test_a_manual_start_holds_after_the_estimate_until_approved(tmp_path):
    st = project(tmp_path)
    schema = parse_label_config(CONFIG).classify.schema()
    manual = type("M", (S,), {"prelabel_start": "manual", "quality_check": False})
    with FakeOpenAI(lambda req: '{"choice": "pos"}') as fake:
        cfg = LLMConfig(api_key="k", base_url=fake.base_url, model="gpt-4o-mini")
        classifier = LLMClassifier(LLMClient(cfg), schema)
        held, report = go(st, classifier, settings=manual, approved=lambda: False)
        assert fake.requests == [] and held.hold.kind == "manual" and held.done == 0
        assert report["estimate"]["tasks"] == 2 and report["estimate"]["cost_usd"] > 0
        assert "waiting for Start Training" in held.hold.reason
        ran, _ = go(st, classifier, settings=manual, approved=lambda: True)
        assert ran.hold is None and ran.done == 2 and len(fake.requests) == 2
