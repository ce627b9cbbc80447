"""Retrieval-augmented pre-annotation through the real openai client and a fake server."""
import json
import math

import numpy as np
import pytest

from alllabel import BM25Similarity
from alllabel.annotators import LLMAnnotator, ProjectionAnnotator, build_demos, dry_run, example_from_spans, prelabel
from alllabel.llm import LLMCache, LLMClient, LLMConfig, LLMError
from alllabel.prompting import LabelSchema, ReplyError, parse_entities
from alllabel.retrieval import retrieve
from alllabel.similarity import matrix
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI, gold_responder

N = 40


@pytest.fixture(scope="module")
def mof():
    recs = mof_records()[:N]
    texts = [r["text"] for r in recs]
    labels = sorted({e["label"] for r in mof_records() for e in r["entities"]})
    spans = {i: [{"start": e["start"], "end": e["end"], "label": e["label"]} for e in r["entities"]] for i, r in enumerate(recs)}
    gold_by_text = {t: example_from_spans(t, spans[i]).entities for i, t in enumerate(texts)}
    return texts, LabelSchema(labels), spans, gold_by_text, BM25Similarity(texts)


def client_for(fake, tmp_path=None, **kw):
    cfg = LLMConfig(api_key="test-key", base_url=fake.base_url, backoff_base=0.01, **kw)
    cache = LLMCache(tmp_path / "llm.sqlite3") if tmp_path else None
    return LLMClient(cfg, cache)


def test_oracle_llm_gives_gold_spans_and_prompt_has_k_nearest(mof):
    texts, schema, spans, gold_by_text, sim = mof
    pool = {i: spans[i] for i in range(10)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        results = prelabel(texts, pool, LLMAnnotator(client_for(fake), schema), sim, k=3)
    assert [r.index for r in results] == list(range(10, N)) and all(r.error is None for r in results)
    for r in results:  # every placed span is a gold span; only gold nested in same-label gold is left out
        placed = {(s.start, s.end, s.label) for s in r.annotation.spans}
        gold = {(s["start"], s["end"], s["label"]) for s in spans[r.index]}
        nested = {g for g in gold if any(o != g and o[2] == g[2] and o[0] <= g[0] and g[1] <= o[1] for o in gold)}
        assert placed <= gold and gold - nested <= placed
    # Each prompt carries exactly the 3 most similar pool texts, most similar first, never the query.
    U = matrix(sim)
    by_input = {req["messages"][-1]["content"].split("Input:\n", 1)[1]: req for req in fake.requests}
    for q in range(10, N):
        req = by_input[texts[q]]
        shown = [m["content"].split(":\n", 1)[1] for m in req["messages"] if m["role"] == "user"][:-1]
        expected = sorted(range(10), key=lambda j: (-U[q, j], j))[:3]
        assert shown == [texts[j] for j in expected]
        answers = [json.loads(m["content"]) for m in req["messages"] if m["role"] == "assistant"]
        assert answers == [{"entities": gold_by_text[texts[j]]} for j in expected]
        assert req["model"] == "gpt-4o" and req["temperature"] == 0 and req["response_format"] == {"type": "json_object"}
        assert all(f'"{label}"' in req["messages"][0]["content"] for label in schema.labels)


def test_retrieval_never_returns_the_query_itself(mof):
    sim = mof[4]
    found = retrieve(sim, [0, 1, 2], [0, 1, 2, 3], k=3)
    assert all(q not in [d.index for d in row] and len(row) == 3 for q, row in zip([0, 1, 2], found))


def test_malformed_replies_fail_alone(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.script = [{"content": "Sure! Here are the entities: solvent DMF"}, {"content": '{"items": []}'}]
        client = client_for(fake, tmp_path)
        results = prelabel(texts[:6], {0: spans[0], 1: spans[1]}, LLMAnnotator(client, schema), BM25Similarity(texts[:6]), concurrency=1)
        errors = [r for r in results if r.error]
        assert len(errors) == 2 and "not JSON" in errors[0].error and '"entities"' in errors[1].error
        assert sum(r.annotation is not None for r in results) == 2
        # Errors are never cached: the re-run asks again for exactly the two failed tasks.
        before = len(fake.requests)
        again = prelabel(texts[:6], {0: spans[0], 1: spans[1]}, LLMAnnotator(client, schema), BM25Similarity(texts[:6]))
        assert len(fake.requests) - before == 2 and all(r.error is None for r in again)
        assert client.usage.cache_hits == 2


def test_cache_makes_rerun_free(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(5)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        first = prelabel(texts, gold, LLMAnnotator(client_for(fake, tmp_path), schema), sim)
        n = len(fake.requests)
        client = client_for(fake, tmp_path)  # a new process would reopen the same file
        second = prelabel(texts, gold, LLMAnnotator(client, schema), sim)
    assert n == N - 5 and len(fake.requests) == n
    assert client.usage.cache_hits == N - 5 and client.usage.calls == 0
    assert [r.annotation.spans for r in first] == [r.annotation.spans for r in second]


def test_429_then_success_honours_retry_after(mof):
    with FakeOpenAI() as fake:
        fake.script = [{"status": 429, "headers": {"Retry-After": "2"}}, {"status": 503}]
        waits = []
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, backoff_base=0.5), sleep=waits.append)
        c = client.complete([{"role": "user", "content": "hi"}])
    assert c.text == '{"entities": []}' and len(fake.requests) == 3
    assert waits[0] == 2.0 and 0 <= waits[1] <= 1.0  # Retry-After, then jittered backoff 0.5 * 2**1
    assert client.usage.retries == 2 and client.usage.calls == 1


def test_timeout_is_retried():
    with FakeOpenAI() as fake:
        fake.script = [{"delay": 1.5}]
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, timeout=0.5, backoff_base=0.01))
        assert client.complete([{"role": "user", "content": "x"}]).text == '{"entities": []}'
    assert client.usage.retries == 1


@pytest.mark.parametrize("status, hint", [(401, "OPENAI_API_KEY"), (400, "HTTP 400"), (404, "ALLABEL_LLM_MODEL")])
def test_no_retry_on_client_errors(status, hint):
    with FakeOpenAI() as fake:
        fake.script = [{"status": status, "message": "nope"}]
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, backoff_base=0.01))
        with pytest.raises(LLMError, match=hint):
            client.complete([{"role": "user", "content": "x"}])
    assert len(fake.requests) == 1 and client.usage.failures == 1


def test_retries_give_up_and_batch_goes_on(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.script = [{"status": 500}] * 3
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, max_retries=2, backoff_base=0.01))
        results = prelabel(texts[:4], {0: spans[0]}, LLMAnnotator(client, schema), BM25Similarity(texts[:4]))
    assert "HTTP 500" in results[0].error and all(r.error is None for r in results[1:])


def test_bounded_concurrency(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.latency = 0.05
        prelabel(texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, concurrency=3)
    assert fake.max_in_flight == 3


def test_logprob_confidence(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text), logprob=-0.2) as fake:
        (r,) = prelabel(texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, queries=[5])
    a = r.annotation
    assert a.confidence_source == "logprobs" and a.score == pytest.approx(math.exp(-0.2))
    assert a.spans and all(s.score == pytest.approx(math.exp(-0.2)) for s in a.spans)


def test_similarity_confidence_without_logprobs(mof):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(8)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        (r,) = prelabel(texts, gold, LLMAnnotator(client_for(fake, logprobs=False), schema), sim, queries=[20])
    (demos,) = build_demos(texts, gold, sim, [20], 3)
    assert r.annotation.confidence_source == "similarity"
    assert r.annotation.score == pytest.approx(np.mean([d.similarity for d in demos]))


def test_labels_outside_the_set_and_unfound_strings_are_counted(mof):
    texts, schema, spans, _, sim = mof
    reply = json.dumps({"entities": [{"label": "solvent", "text": "DMF"}, {"label": "catalyst", "text": "DMF"}, {"label": "solvent", "text": "unobtainium"}]})
    with FakeOpenAI(lambda req: reply) as fake:
        (r,) = prelabel(texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, queries=[2])
    a = r.annotation
    assert a.dropped_bad_label == 1 and a.dropped_not_found == 1
    assert [(texts[2][s.start : s.end], s.label) for s in a.spans] == ([("DMF", "solvent")] if "DMF" in texts[2] else [])


def test_projection_annotator_is_offline_and_grounded(mof):
    texts, schema, spans, _, sim = mof
    gold = {i: spans[i] for i in range(20)}
    results = prelabel(texts, gold, ProjectionAnnotator(schema), sim)
    assert all(r.annotation.annotator == "projection-offline" for r in results)
    placed = [s for r in results for s in r.annotation.spans]
    assert placed and all(texts[r.index][s.start : s.end] == s.text for r in results for s in r.annotation.spans)
    gold_set = {(r.index, s["start"], s["end"], s["label"]) for r in results for s in spans[r.index]}
    hits = sum((r.index, s.start, s.end, s.label) in gold_set for r in results for s in r.annotation.spans)
    assert hits / len(placed) > 0.3  # a weak baseline, but far from random


def test_dry_run_estimates_without_calls(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        est = dry_run(texts, {i: spans[i] for i in range(5)}, LLMAnnotator(client_for(fake, tmp_path), schema), sim)
    assert fake.requests == []
    assert est["tasks"] == N - 5 and est["estimated_prompt_tokens"] > 1000 and est["estimated_cost_usd"] > 0


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"entities": [{"label": "a", "text": "x"}]}', [{"label": "a", "text": "x"}]),
        ('[{"label": "a", "text": "x", "occurrence": 2}]', [{"label": "a", "text": "x", "occurrence": 2}]),
        ('```json\n{"entities": []}\n```', []),
    ],
)
def test_parse_entities(reply, expected):
    assert parse_entities(reply) == expected


@pytest.mark.parametrize("reply", ["no json here", '{"entities": 5}', '"just a string"', '{"other": []}'])
def test_parse_entities_rejects(reply):
    with pytest.raises(ReplyError):
        parse_entities(reply)


def test_no_llm_configured_is_explained(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMClient(LLMConfig.from_env())
