"""Retrieval-augmented pre-annotation through the real openai client and a fake server."""

import json
import math
import time

import numpy as np
import pytest

from alllabel import BM25Similarity
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig, LLMError
from alllabel.prelabel.annotators import LLMAnnotator, ProjectionAnnotator, build_demos
from alllabel.prelabel.estimate import estimate_run
from alllabel.prelabel.prompt import PromptBuilder, ReplyError, parse_entities
from alllabel.prelabel.run import prelabel
from alllabel.selection.retrieval import retrieve
from alllabel.selection.similarity import matrix
from tests.data import mof_setup
from tests.fake_openai import FakeOpenAI, gold_responder

N = 40


@pytest.fixture(scope="module")
def mof():
    return mof_setup(N)


def client_for(fake, tmp_path=None, **kw):
    cfg = LLMConfig(api_key="test-key", base_url=fake.base_url, **kw)
    cache = LLMCache(tmp_path / "llm.sqlite3") if tmp_path else None
    return LLMClient(cfg, cache)


def test_oracle_llm_gives_gold_spans_and_prompt_has_k_nearest(mof):
    texts, schema, spans, gold_by_text, sim = mof
    pool = {i: spans[i] for i in range(10)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        results = prelabel(texts, pool, LLMAnnotator(client_for(fake), schema), sim, k=3)
    assert [r.index for r in results] == list(range(10, N)) and all(
        r.error is None for r in results
    )
    for r in (
        results
    ):  # every placed span is a gold span; only gold nested in same-label gold is left out
        placed = {(s.start, s.end, s.label) for s in r.annotation.spans}
        gold = {(s["start"], s["end"], s["label"]) for s in spans[r.index]}
        nested = {
            g
            for g in gold
            if any(o != g and o[2] == g[2] and o[0] <= g[0] and g[1] <= o[1] for o in gold)
        }
        assert placed <= gold and gold - nested <= placed
    # Each prompt carries exactly the 3 most similar pool texts, most similar first, never the query.
    U = matrix(sim)
    by_input = {
        req["messages"][-1]["content"].split("Input:\n", 1)[1]: req for req in fake.requests
    }
    for q in range(10, N):
        req = by_input[texts[q]]
        shown = [m["content"].split(":\n", 1)[1] for m in req["messages"] if m["role"] == "user"][
            :-1
        ]
        expected = sorted(range(10), key=lambda j: (-U[q, j], j))[:3]
        assert shown == [texts[j] for j in expected]
        answers = [json.loads(m["content"]) for m in req["messages"] if m["role"] == "assistant"]
        assert answers == [{"entities": gold_by_text[texts[j]]} for j in expected]
        assert req["model"] == "gpt-4o" and req["temperature"] == 0
        fmt = req["response_format"]  # structured outputs, the project's labels as the enum
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        assert (
            fmt["json_schema"]["schema"]["properties"]["entities"]["items"]["properties"]["label"][
                "enum"
            ]
            == schema.labels
        )
        assert all(f'"{label}"' in req["messages"][0]["content"] for label in schema.labels)


def test_retrieval_never_returns_the_query_itself(mof):
    sim = mof[4]
    found = retrieve(sim, [0, 1, 2], [0, 1, 2, 3], k=3)
    assert all(
        q not in [d.index for d in row] and len(row) == 3 for q, row in zip([0, 1, 2], found)
    )


def test_malformed_replies_fail_alone(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.script = [
            {"content": "Sure! Here are the entities: solvent DMF"},
            {"content": '{"items": []}'},
        ]
        client = client_for(fake, tmp_path)
        results = prelabel(
            texts[:6],
            {0: spans[0], 1: spans[1]},
            LLMAnnotator(client, schema),
            BM25Similarity(texts[:6]),
            concurrency=1,
        )
        errors = [r for r in results if r.error]
        assert (
            len(errors) == 2 and "not JSON" in errors[0].error and '"entities"' in errors[1].error
        )
        assert sum(r.annotation is not None for r in results) == 2
        # Errors are never cached: the re-run asks again for exactly the two failed tasks.
        before = len(fake.requests)
        again = prelabel(
            texts[:6],
            {0: spans[0], 1: spans[1]},
            LLMAnnotator(client, schema),
            BM25Similarity(texts[:6]),
        )
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


def test_429_then_success_honours_retry_after():
    """The openai client's own retries: Retry-After waited exactly, then its backoff (0.5 s x 2^n)."""
    with FakeOpenAI() as fake:
        fake.script = [{"status": 429, "headers": {"Retry-After": "1"}}, {"status": 503}]
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        t = time.monotonic()
        c = client.complete([{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - t
    assert c.text == '{"entities": []}' and len(fake.requests) == 3
    assert 1.0 + 0.75 <= elapsed < 1.0 + 1.0 + 1.0  # 1 s asked, then 1 s x (0.75..1) jitter
    assert client.usage.retries == 2 and client.usage.calls == 1


def test_retry_after_beyond_two_minutes_is_not_waited():
    with FakeOpenAI() as fake:
        fake.script = [{"status": 429, "headers": {"Retry-After": "600"}, "message": "slow down"}]
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        t = time.monotonic()
        with pytest.raises(LLMError, match="HTTP 429") as err:
            client.complete([{"role": "user", "content": "x"}])
    assert time.monotonic() - t < 5 and len(fake.requests) == 1 and err.value.retryable


def test_timeout_is_retried():
    with FakeOpenAI() as fake:
        fake.script = [{"delay": 1.5}]
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, timeout=0.5))
        assert client.complete([{"role": "user", "content": "x"}]).text == '{"entities": []}'
    assert client.usage.retries == 1


@pytest.mark.parametrize(
    "status, hint", [(401, "OPENAI_API_KEY"), (400, "HTTP 400"), (404, "ALLABEL_LLM_MODEL")]
)
def test_no_retry_on_client_errors(status, hint):
    with FakeOpenAI() as fake:
        fake.script = [{"status": status, "message": "nope"}]
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url))
        with pytest.raises(LLMError, match=hint):
            client.complete([{"role": "user", "content": "x"}])
    assert len(fake.requests) == 1 and client.usage.failures == 1


def test_retries_give_up_and_batch_goes_on(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        # The first call probes structured outputs (no retries; a 500 may be a refusal, as from
        # llama.cpp), then falls back to JSON mode with 2 retries: 4 failures in all.
        fake.script = [{"status": 500}] * 4
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, max_retries=2))
        results = prelabel(
            texts[:4], {0: spans[0]}, LLMAnnotator(client, schema), BM25Similarity(texts[:4])
        )
    assert "HTTP 500" in results[0].error and all(r.error is None for r in results[1:])
    assert client.response_format == "json_schema"  # a failing server is not a refusal


def test_bounded_concurrency(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.latency = 0.05
        prelabel(texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, concurrency=3)
    assert fake.max_in_flight == 3


def test_the_next_call_goes_out_while_a_result_is_still_being_reported(mof):
    """Reading and reporting a task's result (``on_done``: the CLI's progress, the backend's save)
    happens behind the callers: with one call at a time, the second request reaches the endpoint
    while the first task's ``on_done`` is still running."""
    import threading

    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        second_sent, overlapped = threading.Event(), []

        def on_done(result):
            if not overlapped:  # the first result: wait for the next request (never, before)
                overlapped.append(second_sent.wait(timeout=5))

        def respond(req):
            if len(fake.requests) >= 2:
                second_sent.set()
            return gold_responder(gold_by_text)(req)

        fake.responder = respond
        results = prelabel(
            texts,
            {0: spans[0]},
            LLMAnnotator(client_for(fake), schema),
            sim,
            queries=[1, 2, 3],
            concurrency=1,
            on_done=on_done,
        )
    assert overlapped == [True]
    assert all(r.annotation is not None for r in results)


def test_a_reader_that_falls_behind_leaves_the_reading_to_the_callers(mof):
    """While the reader is stuck (here in the first ``on_done``), at most ``READ_BACKLOG`` replies
    wait for it; the callers read and report the next ones themselves, so a starved reader never
    leaves a backlog to read after the last reply."""
    import threading

    from alllabel.prelabel.run import READ_BACKLOG

    texts, schema, spans, gold_by_text, sim = mof
    reported_meanwhile, first, waited = threading.Event(), threading.Lock(), []

    def on_done(result):
        if first.acquire(blocking=False):  # the first result: the reader waits
            waited.append(reported_meanwhile.wait(timeout=10))
        else:  # reported while the reader is stuck: by a caller
            reported_meanwhile.set()

    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        results = prelabel(
            texts,
            {0: spans[0]},
            LLMAnnotator(client_for(fake), schema),
            sim,
            queries=list(range(1, READ_BACKLOG + 4)),
            concurrency=1,
            on_done=on_done,
        )
    assert waited == [True]
    assert all(r.annotation is not None for r in results)


def test_logprob_confidence(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text), logprob=-0.2) as fake:
        (r,) = prelabel(
            texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, queries=[5]
        )
    a = r.annotation
    assert a.confidence_source == "logprobs" and a.score == pytest.approx(math.exp(-0.2))
    assert a.spans and all(s.score == pytest.approx(math.exp(-0.2)) for s in a.spans)


def test_similarity_confidence_without_logprobs(mof):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(8)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        (r,) = prelabel(
            texts, gold, LLMAnnotator(client_for(fake, logprobs=False), schema), sim, queries=[20]
        )
    (demos,) = build_demos(texts, gold, sim, [20], 3)
    assert r.annotation.confidence_source == "similarity"
    assert r.annotation.score == pytest.approx(np.mean([d.similarity for d in demos]))


def test_labels_outside_the_set_and_unfound_strings_are_counted(mof):
    texts, schema, spans, _, sim = mof
    reply = json.dumps(
        {
            "entities": [
                {"label": "solvent", "text": "DMF"},
                {"label": "catalyst", "text": "DMF"},
                {"label": "solvent", "text": "unobtainium"},
            ]
        }
    )
    with FakeOpenAI(lambda req: reply) as fake:
        (r,) = prelabel(
            texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, queries=[2]
        )
    a = r.annotation
    assert a.dropped_bad_label == 1 and a.dropped_not_found == 1
    assert [(texts[2][s.start : s.end], s.label) for s in a.spans] == (
        [("DMF", "solvent")] if "DMF" in texts[2] else []
    )


def test_projection_annotator_is_offline_and_grounded(mof):
    texts, schema, spans, _, sim = mof
    gold = {i: spans[i] for i in range(20)}
    results = prelabel(texts, gold, ProjectionAnnotator(schema), sim)
    assert all(r.annotation.annotator == "projection-offline" for r in results)
    placed = [s for r in results for s in r.annotation.spans]
    assert placed and all(
        texts[r.index][s.start : s.end] == s.text for r in results for s in r.annotation.spans
    )
    gold_set = {
        (r.index, s["start"], s["end"], s["label"]) for r in results for s in spans[r.index]
    }
    hits = sum(
        (r.index, s.start, s.end, s.label) in gold_set for r in results for s in r.annotation.spans
    )
    assert hits / len(placed) > 0.3  # a weak baseline, but far from random


def test_estimate_counts_the_prompts_the_run_sends(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(5)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        annotator = LLMAnnotator(client_for(fake, tmp_path), schema)
        est = estimate_run(texts, gold, annotator, sim)
        assert fake.requests == []
        prelabel(texts, gold, annotator, sim)
        sent = sum(annotator.counter.messages(r["messages"]) for r in fake.requests)
        again = estimate_run(texts, gold, annotator, sim)
    assert est.tasks == est.windows == N - 5 and est.cached == 0
    assert est.prompt_tokens == sent  # the real counter on the very prompts the run sent
    assert (
        est.cost_usd > 0
        and est.batch_cost_usd == pytest.approx(est.cost_usd / 2)
        and est.worst_case_usd > est.cost_usd
    )
    assert again.cached == N - 5 and again.prompt_tokens == 0 and again.cost_usd == 0


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"entities": [{"label": "a", "text": "x"}]}', [{"label": "a", "text": "x"}]),
        (
            '[{"label": "a", "text": "x", "occurrence": 2}]',
            [{"label": "a", "text": "x", "occurrence": 2}],
        ),
        ('```json\n{"entities": []}\n```', []),
    ],
)
def test_parse_entities(reply, expected):
    assert parse_entities(reply) == expected


@pytest.mark.parametrize(
    "reply", ["no json here", '{"entities": 5}', '"just a string"', '{"other": []}']
)
def test_parse_entities_rejects(reply):
    with pytest.raises(ReplyError):
        parse_entities(reply)


def test_no_llm_configured_is_explained(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMClient(LLMConfig.from_env())


# --- structured outputs and endpoint refusals -----------------------------------------------------
def test_json_schema_refused_with_500_falls_back_to_json_object_once(mof):
    """llama.cpp answers 500 to json_schema: one probe without retries, then JSON mode for good."""
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.refuse_json_schema = True
        client = client_for(fake)
        t = time.monotonic()
        results = prelabel(
            texts[:6], {0: spans[0]}, LLMAnnotator(client, schema), BM25Similarity(texts[:6])
        )
    assert time.monotonic() - t < 3  # no backoff schedule spent on the refusal
    assert all(r.error is None for r in results) and client.response_format == "json_object"
    formats = [(r.get("response_format") or {}).get("type") for r in fake.requests]
    assert formats == ["json_schema"] + ["json_object"] * 5


def test_response_format_refused_with_400_falls_back_to_none(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.refuse_response_format = True
        client = client_for(fake)
        results = prelabel(
            texts[:4], {0: spans[0]}, LLMAnnotator(client, schema), BM25Similarity(texts[:4])
        )
    assert all(r.error is None for r in results) and client.response_format == "none"
    assert [(r.get("response_format") or {}).get("type") for r in fake.requests][-2:] == [
        None,
        None,
    ]


def test_logprobs_refused_falls_back_to_similarity(mof):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text), logprob=-0.1) as fake:
        fake.script = [{"status": 400, "message": "logprobs is not supported for this model"}]
        (r,) = prelabel(
            texts,
            {0: spans[0], 1: spans[1]},
            LLMAnnotator(client_for(fake), schema),
            sim,
            queries=[5],
        )
    assert r.annotation.confidence_source == "similarity" and len(fake.requests) == 2
    assert "logprobs" in fake.requests[0] and "logprobs" not in fake.requests[1]


def test_reply_cut_at_max_tokens_fails_and_is_not_cached(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.script = [
            {"content": '{"entities": [{"label": "solvent", "te', "finish_reason": "length"}
        ]
        client = client_for(fake, tmp_path)
        (r,) = prelabel(texts, {0: spans[0]}, LLMAnnotator(client, schema), sim, queries=[5])
        assert "ALLABEL_LLM_MAX_TOKENS" in r.error
        (again,) = prelabel(texts, {0: spans[0]}, LLMAnnotator(client, schema), sim, queries=[5])
    assert again.error is None and len(fake.requests) == 2


# --- confidence -----------------------------------------------------------------------------------
def _graded_logprobs(token: str) -> float:
    """Digits are unsure (-1.0), everything else sure (-0.01): spans with numbers score lower."""
    return -1.0 if any(ch.isdigit() for ch in token) else -0.01


def test_task_score_is_the_weakest_span_and_min_span_score_drops_weak_ones(mof):
    texts, schema, spans, gold_by_text, sim = mof
    q = next(
        i
        for i in range(5, N)
        if any(ch.isdigit() for e in gold_by_text[texts[i]] for ch in e["text"])
    )
    with FakeOpenAI(gold_responder(gold_by_text), logprob=_graded_logprobs) as fake:
        (r,) = prelabel(
            texts, {0: spans[0]}, LLMAnnotator(client_for(fake), schema), sim, queries=[q]
        )
        a = r.annotation
        scores = sorted({s.score for s in a.spans})
        assert len(scores) > 1 and a.score == min(
            s.score for s in a.spans
        )  # Regions panel min == prediction score
        threshold = (scores[0] + scores[-1]) / 2
        (f,) = prelabel(
            texts,
            {0: spans[0]},
            LLMAnnotator(client_for(fake), schema),
            sim,
            queries=[q],
            min_span_score=threshold,
        )
    b = f.annotation
    assert b.spans and all(s.score >= threshold for s in b.spans)
    assert b.dropped_low_score == sum(s.score < threshold for s in a.spans) > 0
    assert b.score == min(s.score for s in b.spans) > a.score


def test_prediction_emptied_by_min_span_score_keeps_a_low_score():
    from alllabel.prelabel.annotation import PreAnnotation, apply_min_span_score
    from alllabel.text.spans import Span

    a = PreAnnotation(
        [Span(0, 3, "L", "abc", 0.4), Span(4, 6, "L", "de", 0.3)],
        0.3,
        "x",
        "logprobs",
        reply_score=0.95,
    )
    b = apply_min_span_score(a, 0.5)
    assert b.spans == [] and b.dropped_low_score == 2 and b.score == 0.4  # not the reply's 0.95
    assert apply_min_span_score(a, 0.2) is a


# --- versions -------------------------------------------------------------------------------------
def test_versions_record_model_prompt_and_demonstrations_and_tell_what_is_stale(mof):
    from alllabel.prelabel.annotation import stale_reasons
    from alllabel.prelabel.run import current_versions

    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(6)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        annotator = LLMAnnotator(client_for(fake), schema)
        (r,) = prelabel(texts, gold, annotator, sim, queries=[20])
        v = r.annotation.version
        (demos,) = build_demos(texts, gold, sim, [20], 3)
        assert (
            v["model"] == "gpt-4o"
            and v["demos"] == [d.index for d in demos]
            and len(v["prompt"]) == 16
        )
        assert (
            stale_reasons(v, current_versions(texts, gold, annotator, sim, queries=[20])[20]) == []
        )
        # A new human annotation that is more similar than the current demonstrations.
        more = {**gold, **{i: spans[i] for i in range(6, N) if i != 20}}
        assert any(
            "demonstrations" in x
            for x in stale_reasons(
                v, current_versions(texts, more, annotator, sim, queries=[20])[20]
            )
        )
        other = LLMAnnotator(client_for(fake, model="gpt-4o-mini"), schema)
        assert any(
            "model gpt-4o -> gpt-4o-mini" in x
            for x in stale_reasons(v, current_versions(texts, gold, other, sim, queries=[20])[20])
        )
        reworded = LLMAnnotator(
            client_for(fake), schema, PromptBuilder(schema, role="You are a chemist.")
        )
        assert stale_reasons(v, current_versions(texts, gold, reworded, sim, queries=[20])[20]) == [
            "prompt or its settings changed"
        ]
        tighter = LLMAnnotator(client_for(fake, max_prompt_tokens=4000), schema)
        assert stale_reasons(v, current_versions(texts, gold, tighter, sim, queries=[20])[20]) == [
            "prompt or its settings changed"
        ]


# --- cost cap -------------------------------------------------------------------------------------
def test_cost_cap_holds_the_rest_and_a_higher_cap_resumes_without_paying_twice(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(5)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        annotator = LLMAnnotator(client_for(fake, tmp_path, max_tokens=512), schema)
        est = estimate_run(texts, gold, annotator, sim)
        cap = est.worst_case_usd / 3
        done = []
        first = prelabel(texts, gold, annotator, sim, max_cost_usd=cap, on_done=done.append)
        held = first.held
        assert 0 < len(held) < N - 5 and first.stopped_at == held[0].index
        assert [r.index for r in held] == [r.index for r in first][
            -len(held) :
        ]  # the run stopped; the rest waits
        assert all(
            r.held.kind == "cost_cap" and "cost cap" in r.held.message and r.error is None
            for r in held
        ) and len(done) == N - 5 - len(held)
        paid = annotator.client.usage.cost(annotator.client.config.prices())
        assert paid <= cap and first.cost_usd == pytest.approx(paid)
        calls = sum(
            r.annotation.windows for r in first if r.annotation
        )  # max_tokens 512 cuts dense tasks in windows
        assert len(fake.requests) == calls and calls >= len(done)

        # Same cap again: the cached answers count at their price, nothing new is bought.
        again = prelabel(
            texts,
            gold,
            LLMAnnotator(client_for(fake, tmp_path, max_tokens=512), schema),
            sim,
            max_cost_usd=cap,
        )
        assert len(fake.requests) == calls and len(again.held) == len(held)

        # A higher cap buys exactly the held tasks.
        client = client_for(fake, tmp_path, max_tokens=512)
        last = prelabel(
            texts,
            gold,
            LLMAnnotator(client, schema),
            sim,
            max_cost_usd=est.worst_case_usd * 1.01,
            concurrency=4,
        )
    assert not last.held and all(r.error is None for r in last)
    asked = [r["messages"][-1]["content"] for r in fake.requests]
    assert (
        len(asked) == len(set(asked)) == sum(r.annotation.windows for r in last)
    )  # every prompt paid once
    assert client.usage.cache_hits == calls


def test_cost_cap_needs_prices(mof):
    texts, schema, spans, _, sim = mof
    with FakeOpenAI() as fake:
        annotator = LLMAnnotator(client_for(fake, model="my-local-model"), schema)
        with pytest.raises(ValueError, match="ALLABEL_PRICE_INPUT"):
            prelabel(texts, {0: spans[0]}, annotator, sim, max_cost_usd=1.0)
        assert fake.requests == []


def test_cost_cap_under_concurrency_never_exceeds(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(5)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.latency = 0.02
        annotator = LLMAnnotator(client_for(fake, tmp_path, max_tokens=256), schema)
        cap = estimate_run(texts, gold, annotator, sim).worst_case_usd / 2
        results = prelabel(texts, gold, annotator, sim, max_cost_usd=cap, concurrency=8)
    client = annotator.client
    assert results.held and client.usage.cost(client.config.prices()) <= cap
    assert all(r.status == "done" for r in results[: len(results) - len(results.held)])


# --- quality before spending ----------------------------------------------------------------------
def test_leave_one_out_scores_each_annotated_task_from_the_others(mof):
    from alllabel.prelabel.quality import leave_one_out, quality_gate

    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(12)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        report = leave_one_out(
            texts, gold, schema.labels, LLMAnnotator(client_for(fake), schema), sim, k=3
        )
        inputs = [r["messages"][-1]["content"].split("Input:\n", 1)[1] for r in fake.requests]
        shown = [
            [m["content"].split(":\n", 1)[1] for m in r["messages"][1:-1:2]] for r in fake.requests
        ]
    assert sorted(inputs) == sorted(texts[i] for i in gold)  # every annotated task, once
    assert all(
        q not in demos and len(demos) == 3 for q, demos in zip(inputs, shown)
    )  # never itself
    assert report.tasks == report.scored == 12 and report.failed == report.held == 0
    assert (
        report.f1 > 0.97 and report.span_precision == 1.0
    )  # the oracle misses only nested same-label gold
    used = {e["label"] for i in gold for e in gold_by_text[texts[i]]}
    assert all(report.per_label[lab]["precision"] == 1.0 for lab in used)
    assert sum(m["gold"] for m in report.per_label.values()) == sum(len(s) for s in gold.values())
    assert quality_gate(report, report.f1) is None and "below the minimum" in quality_gate(
        report, report.f1 + 0.001
    )
    weak = leave_one_out(texts, gold, schema.labels, ProjectionAnnotator(schema), sim, k=3)
    assert weak.f1 < report.f1 and weak.cost_usd == 0


def test_grammar_forced_punctuation_is_no_confidence(mof):
    """llama.cpp scores JSON punctuation a json_object grammar forces from the unconstrained
    distribution (a forced ``{`` at -10): the reply's score leaves it out."""
    texts, schema, spans, _, sim = mof

    def logprob(token):
        return -10.0 if set(token) <= set('{}[]":, ') else -0.01

    with FakeOpenAI(lambda req: '{"entities": []}', logprob=logprob) as fake:
        results = prelabel(
            texts, {0: spans[0], 1: spans[1]}, LLMAnnotator(client_for(fake), schema), sim,
            queries=[5], k=2,
        )  # fmt: skip
    pre = results[0].annotation
    assert pre.confidence_source == "logprobs" and pre.reply_score > 0.95
