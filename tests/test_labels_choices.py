"""<Labels> and <Choices> groups answered in one call per task, through the one pipeline: the
reply's schema and parsing, demonstrations with both, results with their own from_name, a
confidence per result, windows, the quality check and its gate, the cost cap, the Batch API,
near-duplicate carry-over and stale predictions (a real state, the real openai client against
``tests/fake_openai.py``)."""

import json
import math
import threading

import pytest

from alllabel import BM25Similarity
from alllabel.backend import bulk
from alllabel.backend.label_config import parse_label_config
from alllabel.backend.state import State
from alllabel.llm.cache import LLMCache
from alllabel.llm.client import LLMClient, LLMConfig
from alllabel.prelabel.annotators import LLMAnnotator, ProjectionAnnotator, build_demos
from alllabel.prelabel.pipeline import PipelineSettings, run_pipeline
from alllabel.prelabel.prompt import (
    PromptBuilder,
    ReplyError,
    annotated,
    parse_answer,
    response_schema,
)
from tests.fake_openai import FakeOpenAI

TEXT = '<Text name="text" value="$text"/>'
NER = '<Labels name="ner" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>'
MOOD = (
    '<Choices name="mood" toName="text" choice="single-radio"><Choice value="pos" hint="good '
    'news"/><Choice value="neg"/></Choices>'
)
TOPICS = (
    '<Choices name="topics" toName="text" choice="multiple"><Choice value="sport"/>'
    '<Choice value="money"/></Choices>'
)
BOTH = f"<View>{TEXT}{NER}{MOOD}{TOPICS}</View>"
ONLY = f"<View>{TEXT}{MOOD}</View>"
# task -> (text, spans as (label, words), mood, topics); BM25 weighs the words found in few texts
TASKS = {
    1: ("Anna won the cup for Acme", [("PER", "Anna"), ("ORG", "Acme")], "pos", ["sport"]),
    2: ("Bert lost money at Bank", [("PER", "Bert"), ("ORG", "Bank")], "neg", ["money"]),
    3: ("Anna won money and the cup", [("PER", "Anna")], "pos", ["sport", "money"]),
    4: ("Bert lost the cup at Bank", [("PER", "Bert"), ("ORG", "Bank")], "neg", ["sport"]),
    5: ("Anna won the final cup", [("PER", "Anna")], "pos", ["sport"]),
    6: ("Bert lost more money at Bank", [("PER", "Bert"), ("ORG", "Bank")], "neg", ["money"]),
    7: ("Carl saw nothing", [("PER", "Carl")], "neg", []),
}
HUMAN = (1, 2, 3, 4)


class S:  # the backend's settings that a run reads
    k, quality_check, max_cost_usd, min_span_score, min_f1 = 2, True, None, None, None
    duplicate_threshold, project_duplicates, prelabel_start = 0.9, False, "auto"


def result_of(t: int, config: str) -> list[dict]:
    text, spans, mood, topics = TASKS[t]
    out = [
        {"from_name": "mood", "to_name": "text", "type": "choices", "value": {"choices": [mood]}}
    ]
    if config is BOTH:
        out.append(
            {
                "from_name": "topics",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": topics},
            }
        )
        for label, words in spans:
            start = text.index(words)
            value = {"start": start, "end": start + len(words), "text": words, "labels": [label]}
            out.append({"from_name": "ner", "to_name": "text", "type": "labels", "value": value})
    return out


def project(tmp_path, config: str = BOTH, human=HUMAN, texts=None) -> State:
    st = State(tmp_path)
    st.register(9, config)
    texts = texts or {t: v[0] for t, v in TASKS.items()}
    st.upsert_tasks(9, [(t, text, None, None) for t, text in texts.items()])
    for n, t in enumerate(human, start=1):
        st.record_annotation(9, {"id": n, "task": t, "result": result_of(t, config)}, st.tick())
    return st


def oracle(config: str = BOTH, mood=None):
    """The gold answer of the input text (``mood``: text -> the mood to say instead)."""
    by_text = {v[0]: v for v in TASKS.values()}

    def respond(req):
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        _, spans, m, topics = by_text[text]
        choices = {"mood": (mood or {}).get(text, m)}
        if config is ONLY:
            return json.dumps({"choices": choices})
        entities = [{"label": lab, "text": w, "occurrence": None} for lab, w in spans]
        return json.dumps({"entities": entities, "choices": {**choices, "topics": topics}})

    return respond


def neg_is_doubtful(token: str) -> float:
    """Log-probabilities: every token 0.9, those holding the "g" of "neg" 0.5 (no other word of
    these replies has a "g"; the fake server's tokens are 4 characters long)."""
    return math.log(0.5 if "g" in token else 0.9)


def llm(fake, tmp_path, config=BOTH, **kw) -> LLMAnnotator:
    cfg = LLMConfig(api_key="k", base_url=fake.base_url, model="gpt-4o-mini", **kw)
    schema = parse_label_config(config).ner.schema()
    return LLMAnnotator(LLMClient(cfg, LLMCache(tmp_path / "llm.sqlite3")), schema)


def run(st, annotator, settings=S, order=(5, 6, 7), approved=True, quality_done=None):
    cfg = parse_label_config(st.project(9)["label_config"]).ner
    corpus = bulk.Corpus.load(st, 9, cfg)
    report = {}
    out = bulk.run(
        st,
        9,
        corpus,
        annotator,
        BM25Similarity(corpus.texts),
        list(order),
        settings=settings,
        approved=approved,
        quality_done=quality_done,
        report=report.__setitem__,
        saved=lambda: None,
        stop=threading.Event(),
    )
    return out, report


def regions(pred) -> dict:
    out = {}
    for r in pred.result:
        v = r["value"]
        key = r["from_name"]
        if r["type"] == "labels":
            out.setdefault(key, set()).add((v["text"], v["labels"][0]))
        else:
            out[key] = (v["choices"], r["score"])
    return out


def test_one_schema_holds_the_labels_and_every_choices_group():
    schema = parse_label_config(BOTH).ner.schema()
    body = response_schema(schema.labels, schema.choices)["json_schema"]["schema"]
    assert body["required"] == ["entities", "choices"]
    groups = body["properties"]["choices"]
    assert groups["required"] == ["mood", "topics"] and groups["additionalProperties"] is False
    assert groups["properties"]["mood"]["enum"] == ["pos", "neg", None]
    assert groups["properties"]["topics"]["items"]["enum"] == ["sport", "money"]
    only = parse_label_config(ONLY).ner.schema()
    body = response_schema(only.labels, only.choices)["json_schema"]["schema"]
    assert list(body["properties"]) == ["choices"]  # no entities asked for without <Labels>
    system = PromptBuilder(schema).system()
    assert 'Category group "mood" (choose exactly one category' in system
    assert '- "pos": good news' in system and '"topics": [<zero or more of its values>]' in system


def test_replies_keep_valid_values_and_a_choices_only_reply_without_one_fails():
    schema = parse_label_config(BOTH).ner.schema()
    r = parse_answer(
        '```json\n{"entities": [{"label": "PER", "text": "Anna"}], '
        '"choices": {"mood": "meh", "topics": ["money", "golf", "sport"]}}\n```',
        schema,
    )
    assert r.entities == [{"label": "PER", "text": "Anna"}]
    assert r.choices == {"mood": [], "topics": ["sport", "money"]}  # in the group's order
    only = parse_label_config(ONLY).ner.schema()
    assert parse_answer('{"choices": {"mood": "neg"}}', only).choices == {"mood": ["neg"]}
    with pytest.raises(ReplyError, match="no valid choice"):
        parse_answer('{"choices": {"mood": "maybe"}}', only)


def test_demonstrations_show_the_spans_and_the_choices_of_the_human_annotation():
    schema = parse_label_config(BOTH).ner.schema()
    text = TASKS[2][0]
    gold = {0: annotated([{"start": 0, "end": 4, "label": "PER"}], {"mood": ["neg"]}, schema)}
    texts = [text, TASKS[6][0]]
    (row,) = build_demos(texts, gold, BM25Similarity(texts), [1], k=1)
    msgs = PromptBuilder(schema).messages([d.example for d in row], texts[1])
    assert json.loads(msgs[2]["content"]) == {
        "entities": [{"label": "PER", "text": "Bert"}],
        "choices": {"mood": "neg", "topics": []},
    }


def test_one_call_per_task_answers_spans_and_choices_each_result_in_its_group(tmp_path):
    st = project(tmp_path)
    with FakeOpenAI(oracle(), logprob=neg_is_doubtful) as fake:
        out, report = run(st, llm(fake, tmp_path))
        calls = [q["messages"][-1]["content"] for q in fake.requests]
    assert out.done == 3 and out.failed == 0
    assert len(calls) == len(HUMAN) + 3 and len(set(calls)) == len(calls)  # one call per task
    preds = st.predictions(9)
    assert regions(preds[5]) == {
        "ner": {("Anna", "PER")},
        "mood": (["pos"], 0.9),
        "topics": (["sport"], 0.9),
    }
    six = regions(preds[6])
    assert six["ner"] == {("Bert", "PER"), ("Bank", "ORG")} and six["topics"] == (["money"], 0.9)
    # "neg" is scored by its own tokens (a reply-wide mean would stay near 0.9).
    assert six["mood"][0] == ["neg"] and six["mood"][1] < 0.8
    assert preds[6].score == six["mood"][1] and preds[5].score == 0.9  # the weakest result's
    seven = regions(preds[7])
    assert seven["mood"][0] == ["neg"] and seven["mood"][1] < 0.8 and "topics" not in seven
    q = report["quality"]
    assert q["f1"] == 1.0 and q["gate_f1"] == 1.0
    assert q["choices"]["mood"]["accuracy"] == 1.0 and q["choices"]["topics"]["macro_f1"] == 1.0


def test_a_long_text_takes_each_choice_from_its_most_confident_window(tmp_path):
    long = " ".join(f"Anna won cup number {n} for Acme." for n in range(60))
    texts = {t: v[0] for t, v in TASKS.items()} | {5: long}
    TASKS_LONG = {**TASKS, 5: (long, [("PER", "Anna")], "pos", ["sport"])}
    st = project(tmp_path, texts=texts)

    def respond(req):
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        if text in long:  # a window: the first and the last say neg, the others pos
            mood = "neg" if long.startswith(text) or long.endswith(text) else "pos"
            return json.dumps({"entities": [], "choices": {"mood": mood, "topics": ["sport"]}})
        _, spans, m, topics = next(v for v in TASKS_LONG.values() if v[0] == text)
        ents = [{"label": lab, "text": w, "occurrence": None} for lab, w in spans]
        return json.dumps({"entities": ents, "choices": {"mood": m, "topics": topics}})

    settings = type("W", (S,), {"quality_check": False})
    with FakeOpenAI(respond, logprob=neg_is_doubtful) as fake:
        out, _ = run(st, llm(fake, tmp_path, max_prompt_tokens=900), settings, order=(5,))
        windows = [q for q in fake.requests if q["messages"][-1]["content"][7:] in long]
    assert out.done == 1 and len(windows) >= 3
    assert regions(st.predictions(9)[5])["mood"] == (["pos"], 0.9)  # not the first window's neg


def test_the_min_f1_gate_holds_a_classification_run_on_its_macro_f1(tmp_path):
    st = project(tmp_path, ONLY)
    always_pos = {v[0]: "pos" for v in TASKS.values()}
    gate = type("G", (S,), {"min_f1": 0.5})
    with FakeOpenAI(oracle(ONLY, mood=always_pos)) as fake:
        out, report = run(st, llm(fake, tmp_path, ONLY), gate)
        assert len(fake.requests) == len(HUMAN)  # the check only
    assert out.hold.kind == "min_f1" and out.done == 0
    m = report["quality"]["choices"]["mood"]
    assert m["accuracy"] == 0.5 and m["macro_f1"] == pytest.approx(1 / 3)
    assert report["quality"]["f1"] is None and "each <Choices> macro F1" in out.hold.message


def test_a_choices_only_run_has_the_cost_cap_the_manual_start_and_failures(tmp_path):
    st = project(tmp_path, ONLY)
    capped = type("C", (S,), {"max_cost_usd": 1e-9, "quality_check": False})
    manual = type("M", (S,), {"prelabel_start": "manual", "quality_check": False})
    with FakeOpenAI(oracle(ONLY)) as fake:
        out, _ = run(st, llm(fake, tmp_path, ONLY, price_input=1, price_output=1), capped)
        assert fake.requests == [] and out.hold.kind == "cost_cap" and out.hold.tasks == 3
        out, report = run(st, llm(fake, tmp_path, ONLY), manual, approved=False)
        assert fake.requests == [] and out.hold.kind == "manual"
        assert report["estimate"]["tasks"] == 3
    with FakeOpenAI(lambda req: '{"choices": {"mood": "maybe"}}') as fake:
        out, _ = run(st, llm(fake, tmp_path, ONLY, max_retries=0), manual, order=(5,))
    assert out.failed == 1 and "no valid choice" in st.predictions(9)[5].error


def test_the_batch_api_answers_a_classification_run(tmp_path):
    st = project(tmp_path, ONLY)
    cfg = parse_label_config(ONLY).ner
    corpus = bulk.Corpus.load(st, 9, cfg)
    with FakeOpenAI(oracle(ONLY), batch_timing=(0.05, 0.05)) as fake:
        a = llm(fake, tmp_path, ONLY, batch=True, batch_poll=0.05)
        queries = corpus.index([5, 6, 7])
        out = run_pipeline(
            corpus.texts,
            corpus.gold,
            a,
            BM25Similarity(corpus.texts),
            queries,
            PipelineSettings(k=2, quality_check=False),
            labels=[],
        )
        assert fake.uploads == 1 and all(q.get("response_format") for q in fake.requests)
    got = {corpus.ids[r.index]: r.annotation.choices for r in out.results}
    assert got == {5: {"mood": ["pos"]}, 6: {"mood": ["neg"]}, 7: {"mood": ["neg"]}}


def test_a_near_duplicate_gets_the_choices_of_its_annotated_twin_without_a_call(tmp_path):
    texts = {t: v[0] for t, v in TASKS.items()} | {5: TASKS[1][0] + "!"}
    st = project(tmp_path, texts=texts)
    dup = type("D", (S,), {"project_duplicates": True, "quality_check": False})
    with FakeOpenAI(oracle()) as fake:
        out, _ = run(st, llm(fake, tmp_path), dup, order=(5,))
        assert fake.requests == [] and out.projected == 1
    got = regions(st.predictions(9)[5])
    assert got["mood"][0] == ["pos"] and got["topics"][0] == ["sport"]
    assert got["ner"] == {("Anna", "PER"), ("Acme", "ORG")}


def test_start_training_redoes_classifications_whose_prompt_changed(tmp_path):
    st = project(tmp_path, ONLY)
    with FakeOpenAI(oracle(ONLY)) as fake:
        run(st, llm(fake, tmp_path, ONLY), type("Q", (S,), {"quality_check": False}))
        cfg = parse_label_config(ONLY).ner
        corpus = bulk.Corpus.load(st, 9, cfg)
        sim = BM25Similarity(corpus.texts)
        preds = st.predictions(9)
        assert bulk.stale(corpus, llm(fake, tmp_path, ONLY), sim, preds, [5, 6, 7], 2) == {}
        wider = ONLY.replace('<Choice value="neg"/>', '<Choice value="neg"/><Choice value="x"/>')
        changed = llm(fake, tmp_path, wider)
        assert set(bulk.stale(corpus, changed, sim, preds, [5, 6, 7], 2)) == {5, 6, 7}


def test_offline_the_demonstrations_vote_on_each_group(tmp_path):
    st = project(tmp_path)
    out, report = run(st, ProjectionAnnotator(parse_label_config(BOTH).ner.schema()))
    got = regions(st.predictions(9)[6])
    assert out.done == 3 and got["mood"][0] == ["neg"] and got["topics"][0] == ["money"]
    assert got["ner"] >= {("Bert", "PER"), ("Bank", "ORG")}
    assert report["quality"]["choices"]["mood"]["n"] == len(HUMAN)
