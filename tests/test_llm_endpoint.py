"""The client fitted to the endpoint it meets: concurrency that adapts to a serial server, the
log-probabilities asked for the way llama.cpp honours them, the context window from the endpoint
or ALLABEL_LLM_CONTEXT, and replies that loop until the token cap (real ``openai`` client against
``tests/fake_openai.py``)."""

import pytest

from alllabel.llm.client import LLMCache, LLMClient, LLMConfig, LLMError, run_bounded
from alllabel.llm.concurrency import AdaptiveLimit
from alllabel.llm.config import DEFAULT_TIMEOUT, LOCAL_TIMEOUT, is_local
from tests.fake_openai import FakeOpenAI


def client(fake, **kw) -> LLMClient:
    return LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, **kw))


def ask(c: LLMClient, n: int) -> list:
    msgs = [[{"role": "user", "content": f"task {i} " + "word " * 50}] for i in range(n)]
    return run_bounded(c.complete, msgs, c.config.concurrency)


def test_a_serial_server_brings_the_concurrency_down_without_timeouts():
    with FakeOpenAI() as fake:
        fake.serial, fake.latency = True, 0.15
        c = client(fake, concurrency=4)
        results = ask(c, 24)
    assert not [r for r in results if isinstance(r, Exception)]
    report = c.report()
    assert report["concurrency"] < 4 and report["concurrency_lowest"] <= 2
    assert report["concurrency_lowered"] >= 1 and report["retries"] == 0


def test_a_parallel_server_keeps_the_configured_concurrency():
    with FakeOpenAI() as fake:
        fake.latency = 0.3
        c = client(fake, concurrency=4)
        ask(c, 16)
    assert fake.max_in_flight == 4
    assert c.report()["concurrency"] == 4 and c.report()["concurrency_lowered"] == 0


def test_a_parallel_server_with_a_fixed_latency_keeps_it_for_short_and_long_replies():
    """A cloud endpoint answers in about the same time whatever the reply's length: short replies
    are slower per token than long ones without any queueing, and must not lower the limit; the
    same replies queued by a serial server still do."""

    def reply(req) -> str:  # 1 to 60 entities, by task number
        n = 1 + int(req["messages"][-1]["content"].split()[1]) * 7 % 60
        items = [f'{{"text": "MOF-5", "label": "x", "occurrence": {i}}}' for i in range(1, n + 1)]
        return '{"entities": [' + ", ".join(items) + "]}"  # distinct items: not a loop

    with FakeOpenAI(reply) as fake:
        fake.latency = 0.2
        c = client(fake, concurrency=8, stream=False)  # a cloud endpoint's default
        ask(c, 96)
    assert c.report()["concurrency_lowered"] == 0, c.report()
    assert fake.max_in_flight == 8
    with FakeOpenAI(reply) as fake:  # the same replies from a serial server: queueing is seen
        fake.serial, fake.latency = True, 0.05
        c = client(fake, concurrency=4)
        ask(c, 32)
    assert c.report()["concurrency_lowest"] <= 2, c.report()


def test_a_timeout_drops_to_one_call_at_a_time_and_growth_waits_for_headroom():
    limit = AdaptiveLimit(4, timeout=10)
    limit.timed_out()
    assert limit.limit == 1
    for _ in range(40):  # calls of 3 s: two queued ones (6 s) would not end within 5 s
        limit.done(3.0, 100)
    assert limit.limit == 1
    fast = AdaptiveLimit(4, timeout=10)
    fast.timed_out()
    for _ in range(40):
        fast.done(0.5, 100)
    assert fast.limit > 1


def test_the_slot_count_a_server_reports_is_used():
    with FakeOpenAI() as fake:
        fake.props = {"total_slots": 1, "default_generation_settings": {"n_ctx": 8192}}
        c = client(fake, concurrency=4)
        assert c.report()["concurrency"] == 1 and c.report()["concurrency_from_endpoint"]
        assert c.config.max_prompt_tokens + c.config.max_tokens <= 8192  # defaults: 8000 + 2048


def test_vllm_max_model_len_fits_the_budgets_and_a_tiny_context_is_refused():
    with FakeOpenAI() as fake:
        fake.model_meta = {"max_model_len": 4096}
        c = client(fake)
        assert c.config.max_prompt_tokens + c.config.max_tokens <= 4096
        assert c.config.max_tokens == 1024  # a quarter for the reply
    with pytest.raises(ValueError, match="holds 600 tokens"):
        LLMConfig(api_key="k", context=600).check()


def test_context_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALLABEL_LLM_CONTEXT", "8192")
    cfg = LLMConfig.from_env(api_key="k")
    assert cfg.max_prompt_tokens + cfg.max_tokens <= 8192


def test_local_endpoints_get_a_longer_default_timeout():
    assert is_local("http://127.0.0.1:8080/v1") and is_local("http://192.168.1.5:11434/v1")
    assert not is_local("https://api.openai.com/v1") and not is_local(None)
    assert LLMConfig(api_key="k", base_url="http://localhost:8000/v1").timeout is None
    local = LLMConfig(api_key="k", base_url="http://localhost:8000/v1")
    local.check()
    cloud = LLMConfig(api_key="k")
    cloud.check()
    assert (local.timeout, cloud.timeout) == (LOCAL_TIMEOUT, DEFAULT_TIMEOUT)


def test_logprobs_asked_with_top_logprobs_as_llama_cpp_needs():
    with FakeOpenAI(logprob=-0.1) as fake:
        fake.logprobs_need_top = True
        c = client(fake)
        out = c.complete([{"role": "user", "content": "hi"}])
    assert out.logprobs and fake.requests[0]["top_logprobs"] == 1
    assert c.report()["confidence_source"] == "logprobs"


def test_no_logprobs_back_is_said_once(caplog):
    with FakeOpenAI() as fake:  # answers without logprobs
        c = client(fake)
        for i in range(3):
            c.complete([{"role": "user", "content": f"hi {i}"}])
    assert c.report()["confidence_source"].startswith("similarity")
    assert sum("returned no logprobs" in r.getMessage() for r in caplog.records) == 1


def test_a_looping_reply_gets_its_own_advice_and_its_tokens_count():
    loop = '{"entities": [' + '{"text": "MOF-5", "label": "MOF"}, ' * 200
    with FakeOpenAI(lambda req: loop) as fake:
        fake.truncate = True
        c = client(fake, max_tokens=300, stream=False)  # streamed, it is cut at once
        with pytest.raises(LLMError, match="repeated itself") as e:
            c.complete([{"role": "user", "content": "hi"}])
    u = c.report()
    assert e.value.truncated and u["failures"] == 1
    assert (u["prompt_tokens"], u["completion_tokens"]) == fake.billed[0]


def test_a_long_cut_reply_keeps_the_window_advice():
    text = " ".join(f"word{i}" for i in range(400))
    with FakeOpenAI(lambda req: text) as fake:
        fake.truncate = True
        with pytest.raises(LLMError, match="smaller windows"):
            client(fake).complete([{"role": "user", "content": "hi"}])


def test_a_refused_format_is_remembered_per_endpoint_and_model(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    with FakeOpenAI() as fake:
        fake.refuse_json_schema = True
        first = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url), LLMCache(tmp_path / "c"))
        first.complete(msgs, schema={"type": "json_schema", "json_schema": {"name": "x"}})
        assert first.response_format == "json_object" and len(fake.requests) == 2
        fake.requests.clear()
        again = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url), LLMCache(tmp_path / "c"))
        assert again.response_format == "json_object"  # from the cache file: no probe this run
        other = LLMClient(
            LLMConfig(api_key="k", base_url=fake.base_url, model="gpt-4o-mini"),
            LLMCache(tmp_path / "c"),
        )
        assert other.response_format == "json_schema"  # another model is probed on its own
        again.complete([{"role": "user", "content": "new"}], schema={"type": "json_schema"})
    assert [r["response_format"]["type"] for r in fake.requests] == ["json_object"]


def test_a_prompt_over_the_context_says_what_to_set():
    with FakeOpenAI() as fake:
        fake.script = [
            {"status": 400, "message": "Requested tokens (9000) exceed context window of 8192"}
        ]
        with pytest.raises(LLMError, match="context holds 8192 tokens.*ALLABEL_LLM_CONTEXT=8192"):
            client(fake).complete([{"role": "user", "content": "hi"}])


def test_a_timeout_while_queued_is_sent_again_only_under_the_lowered_limit():
    """Four calls at once to a serial server answering in 0.4 s, with a 1 s timeout: the queued
    ones time out; each is sent again only once a slot frees under the lowered limit, never by
    the openai client straight back into the queue it timed out in."""
    with FakeOpenAI() as fake:
        fake.serial, fake.latency = True, 0.4
        c = client(fake, concurrency=4, timeout=1.0, max_retries=5)
        results = ask(c, 4)
    assert not [r for r in results if isinstance(r, Exception)], results
    report = c.report()
    assert report["concurrency_lowest"] == 1 and report["retries"] >= 1
    assert len(fake.requests) <= 4 + report["retries"]  # every retry is one of ours, counted
    assert fake.max_in_flight <= 4
