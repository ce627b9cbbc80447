"""Classification (<Choices>): prompt, enum outputs through the real openai client, offline vote, metrics."""

import json
import math
from pathlib import Path

from alllabel import BM25Similarity
from alllabel.llm.client import LLMClient, LLMConfig
from alllabel.prelabel.classify import (
    ChoiceDemo,
    ChoicePromptBuilder,
    ChoiceSchema,
    LLMClassifier,
    MajorityClassifier,
    classification_metrics,
    leave_one_out_choices,
    parse_choices,
)
from alllabel.text.jsonl import read_jsonl
from tests.fake_openai import FakeOpenAI

DATA = Path(__file__).resolve().parents[1] / "examples" / "mof_classify.jsonl"
SINGLE = ChoiceSchema(("pos", "neg"), {"pos": "the author likes it"})
MULTI = ChoiceSchema(("a", "b", "c"), multiple=True)


def demo(text, choices, sim):
    return ChoiceDemo(text, tuple(choices), sim)


def test_the_prompt_follows_the_papers_structure():
    msgs = ChoicePromptBuilder(SINGLE).messages([demo("great", ["pos"], 0.9)], "awful")
    system = msgs[0]["content"]
    assert "Task description:\nYour task is to choose the one category" in system
    assert '- "pos": the author likes it\n- "neg"' in system
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "Example input 1:\ngreat"
    assert json.loads(msgs[2]["content"]) == {"choice": "pos"}
    assert msgs[3]["content"] == "Input:\nawful"


def test_replies_keep_only_valid_values():
    assert parse_choices('```json\n{"choice": "neg"}\n```', SINGLE) == ["neg"]
    assert parse_choices('{"choice": "meh"}', SINGLE) == []
    assert parse_choices('{"choices": ["c", "x", "a", "a"]}', MULTI) == ["a", "c"]
    try:
        parse_choices("no idea", SINGLE)
    except ValueError:
        pass
    else:
        raise AssertionError("a reply without JSON must raise (it is then not cached)")


def test_the_offline_vote_is_weighted_by_similarity():
    vote = MajorityClassifier(SINGLE).classify(
        "x", [demo("1", ["neg"], 0.2), demo("2", ["neg"], 0.2), demo("3", ["pos"], 0.6)]
    )
    assert vote.choices == ["pos"] and math.isclose(vote.score, 0.6)
    multi = MajorityClassifier(MULTI).classify(
        "x", [demo("1", ["a", "b"], 0.5), demo("2", ["a"], 0.3), demo("3", ["c"], 0.2)]
    )
    assert multi.choices == ["a", "b"] and math.isclose(multi.score, 0.5)


def test_llm_answers_are_restricted_to_an_enum_and_scored_by_logprobs():
    with FakeOpenAI(lambda req: '{"choices": ["b", "c"]}', logprob=math.log(0.8)) as fake:
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        out = LLMClassifier(client, MULTI).classify("t", [demo("d", ["a"], 0.4)])
        fmt = fake.requests[0]["response_format"]
    items = fmt["json_schema"]["schema"]["properties"]["choices"]["items"]
    assert items == {"type": "string", "enum": ["a", "b", "c"]}
    assert out.choices == ["b", "c"] and out.confidence_source == "logprobs"
    assert math.isclose(out.score, 0.8, rel_tol=1e-4)


def test_without_json_schema_support_the_client_falls_back_and_similarity_scores():
    with FakeOpenAI(lambda req: '{"choice": "neg"}') as fake:
        fake.refuse_json_schema = True
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        out = LLMClassifier(client, SINGLE).classify("t", [demo("d", ["pos"], 0.4)])
        formats = [(r.get("response_format") or {}).get("type") for r in fake.requests]
    assert out.choices == ["neg"] and out.confidence_source == "similarity" and out.score == 0.4
    assert formats[0] == "json_schema" and formats[-1] in ("json_object", None)


def test_metrics_accuracy_and_per_class_prf():
    m = classification_metrics([["a"], ["a"], ["b"]], [["a"], ["b"], ["b"]], ["a", "b"])
    assert math.isclose(m["accuracy"], 2 / 3)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert math.isclose(m["per_class"]["b"]["precision"], 0.5)


def test_leave_one_out_on_the_shipped_classification_set_beats_the_majority_class():
    recs = read_jsonl(DATA)[:200]
    texts = [r["text"] for r in recs]
    gold = {i: r["choices"] for i, r in enumerate(recs)}
    schema = ChoiceSchema(("with modulator", "without modulator"))
    m = leave_one_out_choices(texts, gold, BM25Similarity(texts), MajorityClassifier(schema), k=5)
    share = max(sum(g == [c] for g in gold.values()) for c in schema.choices) / len(gold)
    assert m["n"] == 200 and m["accuracy"] > share


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
        return json.dumps({"choice": gold[req["messages"][-1]["content"].split("Input:\n", 1)[1]]})

    out, args = _cls_args(tmp_path, "choices", "--methods", "allabel", "--cache", "")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeOpenAI(respond) as fake:
        assert main(args + ["--base-url", fake.base_url, "--timeout", "20"]) == 0
        assert len(fake.requests) == (60 - 5) + (60 - 10)  # one call per sample outside the pool
    rows = [line.split(",") for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert [float(r[3]) for r in rows] == [1.0, 1.0]
