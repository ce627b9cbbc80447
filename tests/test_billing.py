"""Every billed token counts (issue 15.5): failed, truncated and unparseable replies, retries,
replies the client gave up on, quality checks; answers from the cache are free. The fake
endpoint bills every completion it computes (``FakeOpenAI.billed``)."""

import time

import pytest

from alllabel.env import SettingError
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig, LLMError
from alllabel.llm.tokens import TokenCounter
from alllabel.prelabel.annotators import LLMAnnotator
from alllabel.prelabel.estimate import estimate_run
from alllabel.prelabel.pipeline import PipelineSettings, run_pipeline
from alllabel.prelabel.prompt import ReplyError, parse_entities
from alllabel.prelabel.run import prelabel
from tests.data import mof_setup
from tests.fake_openai import FakeOpenAI, gold_responder

PRICES = (2.50, 10.00)  # gpt-4o, US$ per million tokens
MESSAGES = [{"role": "user", "content": "Input:\nZIF-8 was made in methanol."}]
N = 30


@pytest.fixture(scope="module")
def mof():
    return mof_setup(N)


def client(fake, tmp_path=None, **kw) -> LLMClient:
    cache = LLMCache(tmp_path / "llm.sqlite3") if tmp_path else None
    return LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, **kw), cache)


def worst(prompt_tokens: int, max_tokens: int) -> float:
    return (prompt_tokens * PRICES[0] + max_tokens * PRICES[1]) / 1e6


class Ledger:
    """A caller's spend across runs: every charge as it happens."""

    def __init__(self):
        self.charges: list[float] = []

    def spent(self) -> float:
        return sum(self.charges)

    def charge(self, usd: float) -> None:
        self.charges.append(usd)


def test_a_truncated_reply_is_billed():
    with FakeOpenAI() as fake:
        fake.truncate = True
        c = client(fake, max_tokens=64)
        with pytest.raises(LLMError) as e:
            c.complete(MESSAGES, validate=parse_entities)
    assert e.value.truncated and fake.billed[0][1] == 64
    assert e.value.billed_usd == pytest.approx(fake.billed_usd(PRICES)) and e.value.billed_usd > 0
    assert c.usage.billed_usd == pytest.approx(e.value.billed_usd)


def test_an_error_status_is_free_and_an_unparseable_reply_is_billed():
    with FakeOpenAI() as fake:
        fake.script = [{"status": 500}, {"content": "this is not JSON"}]
        c = client(fake, max_retries=2)
        with pytest.raises(ReplyError) as e:
            c.complete(MESSAGES, validate=parse_entities)
    assert len(fake.requests) == 2 and len(fake.billed) == 1  # the 500 computed nothing
    assert e.value.billed_usd > 0
    assert e.value.billed_usd == pytest.approx(fake.billed_usd(PRICES))


def test_a_reply_the_client_gave_up_on_counts_at_its_worst_case():
    counted = TokenCounter("gpt-4o").messages(MESSAGES)
    with FakeOpenAI() as fake:
        fake.script = [{"delay": 3.0}]  # the first attempt times out; the server bills it anyway
        c = client(fake, timeout=1.0, max_retries=1, max_tokens=100)
        answer = c.complete(MESSAGES, prompt_tokens=counted)
        time.sleep(3.0)  # the abandoned request finishes on the server
        second = fake.billed[-1]
    assert len(fake.billed) == 2
    expected = worst(counted, 100) + (second[0] * PRICES[0] + second[1] * PRICES[1]) / 1e6
    assert answer.billed_usd == pytest.approx(expected)
    assert answer.billed_usd >= fake.billed_usd(PRICES)  # never below what was billed


def test_a_reply_without_usage_counts_at_its_worst_case_and_a_cached_one_is_free(tmp_path):
    with FakeOpenAI() as fake:
        fake.omit_usage = True
        c = client(fake, tmp_path, max_tokens=50)
        first = c.complete(MESSAGES, prompt_tokens=40)
        again = c.complete(MESSAGES, prompt_tokens=40)
    assert first.billed_usd == pytest.approx(worst(40, 50))
    assert again.cached and again.billed_usd == 0 and len(fake.requests) == 1


def test_replies_cut_at_max_tokens_stop_at_the_cap_and_the_hold_names_the_cause(mof):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(5)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.truncate = True
        annotator = LLMAnnotator(client(fake, max_tokens=256), schema)
        cap = estimate_run(texts, gold, annotator, sim).worst_case_usd / 4
        results = prelabel(texts, gold, annotator, sim, max_cost_usd=cap, concurrency=4)
        billed = fake.billed_usd(PRICES)
    done = [r for r in results if not r.held]
    assert done and all(r.truncated and r.annotation is None for r in done)
    assert 0 < billed <= cap and results.billed_usd == pytest.approx(billed)
    hold = results.hold()
    assert hold.kind == "cost_cap" and hold.tasks == len(results.held) > 0
    assert "ALLABEL_LLM_MAX_TOKENS" in hold.cause and "ALLABEL_LLM_MAX_TOKENS" in hold.message


def test_a_ledger_is_charged_per_call_and_the_quality_check_once(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(6)}
    settings = PipelineSettings(k=3, max_cost_usd=5.0)
    ledger = Ledger()
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.script = [{"content": "not JSON"}]  # the first call fails: billed, then retried

        def run():
            annotator = LLMAnnotator(client(fake, tmp_path), schema)
            return run_pipeline(
                texts, gold, annotator, sim, range(N), settings, labels=schema.labels, ledger=ledger
            )

        first = run()
        after_first = len(ledger.charges)
        assert (
            after_first == len(fake.billed) == 30
        )  # one charge per billed call, the failed one too
        second = run()  # a restart: the failed check call is asked again, the rest is cached
        third = run()
        billed = fake.billed_usd(PRICES)
    assert first.quality.tasks == 6 and first.quality.failed == 1 and first.quality.billed_usd > 0
    assert len(ledger.charges) == after_first + 1 == len(fake.billed)
    assert ledger.spent() == pytest.approx(billed)
    assert second.quality.failed == 0 and second.quality.billed_usd == pytest.approx(
        ledger.charges[-1]
    )
    assert second.results.billed_usd == 0 and third.quality.billed_usd == 0
    assert all(r.annotation is not None for r in third.results)


def test_batch_lines_are_billed_when_collected_truncated_ones_too(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(5)}
    with FakeOpenAI(gold_responder(gold_by_text), batch_timing=(0.05, 0.05)) as fake:
        fake.truncate = True
        cfg = LLMConfig(api_key="k", base_url=fake.base_url, batch=True, batch_poll=0.05)
        annotator = LLMAnnotator(LLMClient(cfg, LLMCache(tmp_path / "b.sqlite3")), schema)
        results = prelabel(texts, gold, annotator, sim, queries=range(5, 10))
        billed = fake.billed_usd(PRICES, factor=cfg.batch_price_factor)
    assert all(r.status == "failed" and r.truncated for r in results) and billed > 0
    assert results.billed_usd == pytest.approx(billed)


def test_llm_settings_are_read_strictly(monkeypatch):
    monkeypatch.setenv("ALLABEL_LLM_BATCH", "ture")
    with pytest.raises(SettingError, match="ALLABEL_LLM_BATCH"):
        LLMConfig.from_env()
    monkeypatch.setenv("ALLABEL_LLM_BATCH", "yes")
    monkeypatch.setenv("ALLABEL_LLM_MAX_TOKENS", "2k")
    with pytest.raises(SettingError, match="ALLABEL_LLM_MAX_TOKENS"):
        LLMConfig.from_env()
    monkeypatch.setenv("ALLABEL_LLM_MAX_TOKENS", "512")
    assert LLMConfig.from_env().batch is True and LLMConfig.from_env().max_tokens == 512


def test_the_metered_transport_reads_a_compressed_reply_and_hands_it_on_intact():
    import gzip
    import json

    import httpx2

    from alllabel.llm.billing import MeteredTransport, billing

    body = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}

    def endpoint(request):
        data = gzip.compress(json.dumps(body).encode())
        return httpx2.Response(200, headers={"content-encoding": "gzip"}, content=data)

    with httpx2.Client(transport=MeteredTransport(httpx2.MockTransport(endpoint))) as http:
        with billing() as bill:
            reply = http.post("http://llm.test/v1/chat/completions", json={})
    assert reply.json() == body and (bill.prompt_tokens, bill.completion_tokens) == (12, 3)
