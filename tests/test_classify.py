"""Classification (<Choices>) through the one-call annotator: prompt, enum outputs through the real
openai client with the format fallback, offline vote, metrics, leave-one-out, ``evaluate``."""

import json
import math
from pathlib import Path

from alllabel import BM25Similarity
from alllabel.llm.client import LLMClient, LLMConfig
from alllabel.prelabel.annotators import Demo, LLMAnnotator, ProjectionAnnotator
from alllabel.prelabel.classify import classification_metrics
from alllabel.prelabel.prompt import (
    ChoiceGroup,
    LabelSchema,
    PromptBuilder,
    annotated,
    example_from_spans,
    parse_answer,
)
from alllabel.prelabel.quality import leave_one_out
from alllabel.prelabel.run import prelabel
from alllabel.text.jsonl import read_jsonl
from tests.fake_openai import FakeOpenAI

DATA = Path(__file__).resolve().parents[1] / "examples" / "mof_classify.jsonl"
SINGLE = LabelSchema(
    [],
    choices=(ChoiceGroup("mood", ("pos", "neg"), descriptions=(("pos", "the author likes it"),)),),
)
MULTI = LabelSchema([], choices=(ChoiceGroup("tags", ("a", "b", "c"), multiple=True),))


def demo(schema, text, choices, sim):
    (g,) = schema.choices
    return Demo(example_from_spans(text, annotated([], {g.name: choices}, schema)), sim)


def test_the_prompt_follows_the_papers_structure():
    msgs = PromptBuilder(SINGLE).messages([demo(SINGLE, "great", ["pos"], 0.9).example], "awful")
    system = msgs[0]["content"]
    assert "Task description:\nYour task is to choose the category of" in system
    assert '- "pos": the author likes it\n- "neg"' in system
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "Example input 1:\ngreat"
    assert json.loads(msgs[2]["content"]) == {"choices": {"mood": "pos"}}
    assert msgs[3]["content"] == "Input:\nawful"


def test_replies_keep_only_valid_values():
    assert parse_answer('```json\n{"choices": {"mood": "neg"}}\n```', SINGLE).choices == {
        "mood": ["neg"]
    }
    reply = parse_answer('{"choices": {"tags": ["c", "x", "a", "a"]}}', MULTI)
    assert reply.choices == {"tags": ["a", "c"]}
    for bad in ("no idea", '{"choices": {"mood": "meh"}}'):
        try:
            parse_answer(bad, SINGLE)
        except ValueError:
            pass
        else:
            raise AssertionError("a reply without a valid choice must raise (it is not cached)")


def test_the_offline_vote_is_weighted_by_similarity():
    demos = [demo(SINGLE, "1", ["neg"], 0.2), demo(SINGLE, "2", ["neg"], 0.2)]
    vote = ProjectionAnnotator(SINGLE).annotate("x", demos + [demo(SINGLE, "3", ["pos"], 0.6)])
    assert vote.choices == {"mood": ["pos"]} and math.isclose(vote.score, 0.6)
    demos = [demo(MULTI, "1", ["a", "b"], 0.5), demo(MULTI, "2", ["a"], 0.3)]
    multi = ProjectionAnnotator(MULTI).annotate("x", demos + [demo(MULTI, "3", ["c"], 0.2)])
    assert multi.choices == {"tags": ["a", "b"]} and math.isclose(multi.score, 0.5)


def classify(fake, schema, demos, **kw):
    """One task answered by the LLM annotator from ``demos`` [(text, choices)], via ``prelabel``."""
    a = LLMAnnotator(LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, **kw)), schema)
    texts = ["t"] + [text for text, _ in demos]
    name = schema.choices[0].name
    gold = {i: annotated([], {name: c}, schema) for i, (_, c) in enumerate(demos, start=1)}
    (r,) = prelabel(texts, gold, a, BM25Similarity(texts), queries=[0], k=len(demos))
    return r.annotation


def test_llm_answers_are_restricted_to_an_enum_and_scored_by_logprobs():
    reply = '{"choices": {"tags": ["b", "c"]}}'
    with FakeOpenAI(lambda req: reply, logprob=math.log(0.8)) as fake:
        out = classify(fake, MULTI, [("d", ["a"])])
        fmt = fake.requests[0]["response_format"]
    tags = fmt["json_schema"]["schema"]["properties"]["choices"]["properties"]["tags"]
    assert tags["items"] == {"type": "string", "enum": ["a", "b", "c"]}
    assert out.choices == {"tags": ["b", "c"]} and out.confidence_source == "logprobs"
    assert math.isclose(out.score, 0.8, rel_tol=1e-4)


def test_without_json_schema_support_the_client_falls_back_and_similarity_scores():
    with FakeOpenAI(lambda req: '{"choices": {"mood": "neg"}}') as fake:
        fake.refuse_json_schema = True
        out = classify(fake, SINGLE, [("d t", ["pos"])], logprobs=False)
        formats = [(r.get("response_format") or {}).get("type") for r in fake.requests]
    assert out.choices == {"mood": ["neg"]} and out.confidence_source == "similarity"
    assert out.score == out.choice_scores["mood"] == out.reply_score
    assert formats[0] == "json_schema" and formats[-1] in ("json_object", None)


def test_metrics_accuracy_and_per_class_prf():
    m = classification_metrics([["a"], ["a"], ["b"]], [["a"], ["b"], ["b"]], ["a", "b"])
    assert math.isclose(m["accuracy"], 2 / 3)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert math.isclose(m["per_class"]["b"]["precision"], 0.5)


def test_leave_one_out_on_the_shipped_classification_set_beats_the_majority_class():
    recs = read_jsonl(DATA)[:200]
    texts = [r["text"] for r in recs]
    group = ChoiceGroup("modulator", ("with modulator", "without modulator"))
    schema = LabelSchema([], choices=(group,))
    gold = {i: annotated([], {"modulator": r["choices"]}, schema) for i, r in enumerate(recs)}
    q = leave_one_out(texts, gold, [], ProjectionAnnotator(schema), BM25Similarity(texts), k=5)
    m = q.choices["modulator"]
    share = max(sum(r["choices"] == [c] for r in recs) for c in group.values) / len(recs)
    assert m["n"] == 200 and m["accuracy"] > share and q.gate_f1 == m["macro_f1"]


def _cls_args(tmp_path, field, *extra):
    from alllabel.text.jsonl import write_jsonl

    path = tmp_path / "cls.jsonl"
    write_jsonl(path, read_jsonl(DATA)[:60])
    out = tmp_path / "eval"
    args = ["evaluate", str(path), "--choices-field", field, "--pool-sizes", "5,10"]
    return out, args + ["--seeds", "2", "--out-dir", str(out), "--quiet", *extra]


def test_evaluate_a_classification_set_offline_writes_table_csv_and_plot(tmp_path):
    from alllabel.cli import main

    out, args = _cls_args(tmp_path, "quantities", "--annotator", "projection")
    assert main(args) == 0
    rows = [line.split(",") for line in (out / "results.csv").read_text().splitlines()]
    assert rows[0] == ["method", "seed", "pool_size", "accuracy", "macro_f1"]
    assert len(rows) == 1 + 2 * (1 + 2 + 2)  # allabel once, random and coreset per seed
    assert all(0 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 1 for r in rows[1:])
    assert "| coreset |" in (out / "table.md").read_text()
    assert (out / "accuracy_vs_pool.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_a_classification_set_with_an_oracle_llm_is_perfect(tmp_path, monkeypatch):
    from alllabel.cli import main

    gold = {r["text"]: r["choices"][0] for r in read_jsonl(DATA)[:60]}

    def respond(req):
        text = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        return json.dumps({"choices": {"choices": gold[text]}})

    out, args = _cls_args(tmp_path, "choices", "--methods", "allabel", "--cache", "")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeOpenAI(respond) as fake:
        assert main(args + ["--base-url", fake.base_url, "--timeout", "20"]) == 0
        assert len(fake.requests) == (60 - 5) + (60 - 10)  # one call per sample outside the pool
    rows = [line.split(",") for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert [float(r[3]) for r in rows] == [1.0, 1.0]
