"""The pre-annotation pipeline's pieces: annotator protocols, the two executors behind one
interface, structured holds, and the steps shared by the command line and the backend."""

import pytest

from alllabel.llm.client import LLMCache, LLMClient, LLMConfig
from alllabel.prelabel.annotation import PreAnnotation
from alllabel.prelabel.annotators import (
    Direct,
    LLMAnnotator,
    Priced,
    ProjectionAnnotator,
    Prompted,
    Versioned,
)
from alllabel.prelabel.executors import BatchExecutor, OnlineExecutor
from alllabel.prelabel.pipeline import PipelineSettings, run_pipeline
from alllabel.prelabel.prompt import parse_entities
from alllabel.prelabel.run import prepare_run
from tests.data import mof_setup
from tests.fake_openai import FakeOpenAI, gold_responder

N = 20


@pytest.fixture(scope="module")
def mof():
    return mof_setup(N)


def llm(fake, tmp_path=None, **kw) -> LLMAnnotator:
    cache = LLMCache(tmp_path / "c.sqlite3") if tmp_path else None
    return LLMAnnotator(
        LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, **kw), cache), mof_setup(N)[1]
    )


class Everything:
    """A third annotator, neither class above: it labels the whole text with the first label."""

    name = "everything"

    def __init__(self, label):
        self.label = label

    def version(self, demos, prompts=None):
        return {"annotator": self.name, "demos": [d.index for d in demos]}

    def annotate(self, text, demos):
        from alllabel.text.spans import Span

        return PreAnnotation([Span(0, len(text), self.label, text, 1.0)], 1.0, self.name, "x")


def test_the_protocols_say_what_an_annotator_can_do(mof):
    _, schema, *_ = mof
    with FakeOpenAI() as fake:
        a = llm(fake)
    assert isinstance(a, Prompted) and isinstance(a, Priced) and isinstance(a, Versioned)
    assert not isinstance(a, Direct)
    p = ProjectionAnnotator(schema)
    assert isinstance(p, Direct) and isinstance(p, Versioned)
    assert not isinstance(p, Prompted) and not isinstance(p, Priced)


def test_any_direct_annotator_runs_through_the_pipeline_and_a_cap_does_not_apply(mof):
    texts, schema, spans, *_ = mof
    gold = {i: spans[i] for i in range(4)}
    s = PipelineSettings(k=2, max_cost_usd=0.0, min_f1=0.0)
    out = run_pipeline(
        texts, gold, Everything(schema.labels[0]), mof[4], range(N), s, labels=schema.labels
    )
    assert out.estimate is None and out.hold is None and out.quality.tasks == 4
    assert [r.index for r in out.results] == list(range(4, N))
    assert all(r.annotation.spans[0].end == len(texts[r.index]) for r in out.results)


def test_online_and_batch_executors_answer_the_same_prompts_alike(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    with FakeOpenAI(gold_responder(gold_by_text), batch_timing=(0.05, 0.05)) as fake:
        a = llm(fake)
        work = prepare_run(texts, gold, a, sim, queries=[5, 6, 7], k=2)
        windows = [w for p in work.prompts for w in p.windows]
        online = OnlineExecutor(a.client, a.response_schema, parse_entities).execute(windows[:1])
        client = LLMClient(
            LLMConfig(api_key="k", base_url=fake.base_url, batch=True, batch_poll=0.05),
            LLMCache(tmp_path / "b.sqlite3"),
        )
        batch = BatchExecutor(client, a.response_schema, parse_entities).execute(windows)
    assert len(batch) == len(windows) and all(x.completion is not None for x in batch)
    assert [x.completion.text for x in batch[:1]] == [x.completion.text for x in online]
    assert fake.uploads == 1 and all(x.billed_usd > 0 for x in batch)


def test_holds_before_the_run_are_structured(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    with FakeOpenAI(lambda req: '{"entities": []}') as fake:  # finds nothing: F1 0
        out = run_pipeline(
            texts,
            gold,
            llm(fake, tmp_path),
            sim,
            range(N),
            PipelineSettings(k=2, min_f1=0.5),
            labels=schema.labels,
            quality_key="gold-1",
        )
        assert out.results is None and len(fake.requests) == 4  # the check only
        h = out.hold
        assert h.kind == "min_f1" and h.min_f1 == 0.5 and h.f1 < 0.5 and h.key == "gold-1"
        assert "below the minimum" in h.message
        manual = PipelineSettings(k=2, quality_check=False, manual_start=True)
        out = run_pipeline(
            texts, gold, llm(fake, tmp_path), sim, range(N), manual, labels=schema.labels
        )
        assert out.results is None and out.hold.kind == "manual" and len(fake.requests) == 4
        assert f"{out.estimate.tasks} tasks" in out.hold.message


def test_a_cap_hold_names_the_cause_an_earlier_run_spent_the_cap_on(tmp_path):
    """The command line keeps its spend per run key across runs, and the cause with it: a later run
    held at the cap before any call says what the earlier run's failed calls went to."""
    from alllabel.cli.prelabel import CacheLedger
    from alllabel.llm.cache import LLMCache
    from alllabel.prelabel import holds

    cache = LLMCache(tmp_path / "c.sqlite3")
    cut = "the replies are cut at ALLABEL_LLM_MAX_TOKENS"
    first = CacheLedger(cache, "run").explain(holds.cost_cap(0.1, 0.09, 3, cause=cut))
    assert first.cause == cut
    plain = holds.cost_cap(0.1, 0.095, 5)
    assert plain.cause is None and "raise the cap" in plain.message
    later = CacheLedger(LLMCache(tmp_path / "c.sqlite3"), "run").explain(plain)
    assert later.cause == cut and cut in later.message and "raise the cap" not in later.message
    assert CacheLedger(cache, "another run").explain(plain) == plain  # per run key
    manual = holds.Hold("manual", "waiting")
    assert CacheLedger(cache, "run").explain(manual) is manual
