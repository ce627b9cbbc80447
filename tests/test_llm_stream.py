"""Replies read as they stream: a looping one cut at once with its tokens counted, a long list of
distinct spans read whole with its per-piece log-probabilities, endpoints that refuse streaming or
``stream_options`` (remembered), a single-slot server that interrupts a stream when another call
waits (llama-cpp-python), a stalled stream, and a server that takes no connection (real ``openai``
client against ``tests/fake_openai.py``)."""

import json
import logging
import socket

import pytest

from alllabel.llm.client import LLMCache, LLMClient, LLMConfig, LLMError, run_bounded
from alllabel.llm.stream import LOOP_CHARS, loop_unit
from tests.data import mof_records
from tests.fake_openai import FakeOpenAI

MSGS = [{"role": "user", "content": "Input:\nsome paragraph"}]
ITEM = '{"text": "MOF-5", "label": "MOF", "occurrence": 1}, '


def client(fake, cache=None, **kw) -> LLMClient:
    kw.setdefault("stream", True)  # said, though the default on loopback
    return LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, **kw), cache)


def distinct(n: int) -> str:
    return json.dumps({"entities": [{"text": f"MOF-{i}", "label": "MOF"} for i in range(n)]})


def test_the_loop_rule_fires_on_repeats_and_never_on_distinct_spans():
    assert loop_unit(distinct(300)) is None
    assert loop_unit(distinct(3)[:-2] + ", " + ITEM * 7) is None  # seven in a row: not yet
    assert loop_unit('{"entities": [' + ITEM * 8) in {ITEM[k:] + ITEM[:k] for k in range(len(ITEM))}
    cycle = "".join(f'{{"text": "Zn{i}", "label": "metal"}},\n' for i in range(3))
    assert loop_unit('{"entities": [' + cycle * 8)  # the same lines cycling
    assert loop_unit('{"entities": [' + " " * 200)  # whitespace until the cap
    assert loop_unit("Zn Zn " * 10) is None  # too short to tell


def test_a_span_the_input_repeats_is_no_loop_until_said_more_often():
    """Numbered compounds: "compound 1" nine times in a paragraph gives nine identical items when
    a reply leaves out ``occurrence`` (the e2e oracle's answer was cut as a loop before)."""
    item = '{"label": "compound name", "text": "1"}, '
    source = "Input:\n" + " ".join(["compound 1 was washed with water and dried."] * 9)
    assert loop_unit('{"entities": [' + item * 9, source) is None
    assert loop_unit('{"entities": [' + item * 9 + item[:17], source) is None  # mid-item
    # The next item starts like the repeated one ("10"): with the previous item's end it made a
    # tenth repeat of the unit ('"}, {"label": "compound name", "text": "1'), cut before (the
    # e2e failure: 41 repeats of a unit counted for 40 items of "L", as often as the input).
    other = '{"label": "compound name", "text": "MOF-5"}, '
    assert loop_unit('{"entities": [' + other + item * 9 + item[:-4], source) is None
    assert loop_unit('{"entities": [' + item * 10, source)  # more than the input holds
    assert loop_unit('{"entities": [' + item * 9)  # no input known: the plain rule
    messages = [{"role": "user", "content": source}]
    reply = json.dumps({"entities": [{"label": "compound name", "text": "1"}] * 9})
    with FakeOpenAI() as fake:
        fake.script = [{"content": reply}]
        result = client(fake).complete(messages, prompt_tokens=40)
    assert json.loads(result.text)["entities"] == json.loads(reply)["entities"]


def test_no_moment_of_a_reply_the_input_justifies_is_taken_for_a_loop():
    """The e2e oracle's shape (test_e2e_bulk's long text): every known entity listed once per
    place its text stands in a window, no ``occurrence``, sorted, so "L" or "1" comes dozens of
    times in a row. Checked at every character the stream could stop at, then streamed whole."""
    recs = mof_records()[306:312]
    text = "".join("Run \U0001f9ea \U0001d6fc\r\n" + r["text"] + "\r\n\r\n" for r in recs)
    every = mof_records()[240:560]  # what the e2e oracle knows: "1", "2", "L" come dozens of times
    known = {(e["label"], r["text"][e["start"] : e["end"]]) for r in every for e in r["entities"]}

    def oracle(req):
        window = req["messages"][-1]["content"].split("Input:\n", 1)[1]
        items = [
            {"label": la, "text": s} for la, s in sorted(known) for _ in range(window.count(s))
        ]
        return json.dumps({"entities": items})

    messages = [{"role": "user", "content": "Find the spans.\nInput:\n" + text}]
    reply = oracle({"messages": messages})
    assert max(text.count(s) for _, s in known) >= 30  # long runs of one identical item
    source = messages[-1]["content"]
    assert [n for n in range(LOOP_CHARS, len(reply) + 1) if loop_unit(reply[:n], source)] == []
    with FakeOpenAI(oracle) as fake:
        assert client(fake).complete(messages).text == reply
    assert fake.requests[0]["stream"] and fake.streamed[0] > len(reply) // 4  # every piece read


def test_a_repeated_stretch_inside_a_span_is_no_loop_while_the_input_holds_it():
    source = "Input:\nTable 1\n" + "=" * 300 + "\nMOF-5 \u00b0C" + "\u00b0C" * 100
    start = '{"entities": [{"label": "rule", "text": "'
    assert loop_unit(start + "=" * 300, source) is None
    assert loop_unit(start + "=" * 301, source)  # longer than any run the input has
    assert loop_unit(start + "\\u00b0C" * 101, source) is None  # escaped as json.dumps does
    assert loop_unit(start + "\\u00b0C" * 102, source)


def test_a_looping_reply_is_cut_as_it_streams_and_its_tokens_count():
    loop = '{"entities": [' + ITEM * 500  # would run to the 2,048-token cap
    with FakeOpenAI() as fake:
        fake.stream_delay = 0.001
        fake.script = [{"content": loop, "finish_reason": "length"}]
        c = client(fake)
        with pytest.raises(LLMError, match="repeating itself.*MOF-5.*not the cause") as e:
            c.complete(MSGS, prompt_tokens=40)
    u = c.report()
    pieces = len(loop) // 4
    assert e.value.truncated and u["failures"] == 1 and u["loops_cut"] == 1
    assert fake.streamed[0] < pieces / 10  # cut at once, not run to the cap
    # No usage came for the cut stream: the prompt as counted, one token per piece received.
    assert u["tokens_estimated"] == 1 and u["prompt_tokens"] == 40
    assert 0 < u["completion_tokens"] <= fake.streamed[0] and u["billed_usd"] > 0


def test_a_long_list_of_distinct_spans_streams_whole_with_logprobs_and_usage():
    reply = distinct(300)
    with FakeOpenAI(lambda req: reply, logprob=-0.25) as fake:
        c = client(fake)
        out = c.complete(MSGS)
    assert out.text == reply and len(out.logprobs) == -(-len(reply) // 4)
    assert fake.requests[0]["stream"] and fake.requests[0]["stream_options"]["include_usage"]
    assert (out.prompt_tokens, out.completion_tokens) == fake.billed[0]
    assert c.report()["tokens_estimated"] == 0 and c.report()["confidence_source"] == "logprobs"


@pytest.mark.parametrize("refuse", ["refuse_stream_options", "refuse_stream"])
def test_a_refused_stream_falls_back_and_is_remembered(tmp_path, refuse):
    with FakeOpenAI(lambda req: distinct(2)) as fake:
        setattr(fake, refuse, True)
        first = client(fake, LLMCache(tmp_path / "c"))
        assert first.complete(MSGS).text == distinct(2)
        assert len(fake.requests) == 2  # refused once, then answered
        fake.requests.clear()
        again = client(fake, LLMCache(tmp_path / "c"))
        again.complete([{"role": "user", "content": "another"}])
    (body,) = fake.requests  # no second refusal: the fallback was remembered
    assert "stream_options" not in body
    assert bool(body.get("stream")) == (refuse == "refuse_stream_options")
    assert again.report()["tokens_estimated"] == (refuse == "refuse_stream_options")


def test_a_server_that_interrupts_streams_gets_one_call_at_a_time():
    """llama-cpp-python's server ends the running stream unfinished when another completion
    waits for its only slot: every call is still answered, once the client sends one at a time."""
    with FakeOpenAI(lambda req: distinct(20)) as fake:
        fake.serial, fake.interrupt_streams, fake.stream_delay = True, True, 0.002
        c = client(fake, concurrency=4)
        results = run_bounded(
            c.complete, [[{"role": "user", "content": f"t{i}"}] for i in range(8)], 4
        )
    assert not [r for r in results if isinstance(r, Exception)], results
    report = c.report()
    assert report["concurrency"] == 1 and report["concurrency_from_endpoint"]
    assert report["calls"] == 8 and report["retries"] >= 1
    assert len(fake.requests) == 8 + report["retries"]  # each interrupted call sent once more


def test_a_stalled_stream_times_out_and_is_sent_again_once():
    with FakeOpenAI(lambda req: distinct(2)) as fake:
        fake.stream_delay = 1.0
        c = client(fake, timeout=0.3, max_retries=1)
        with pytest.raises(LLMError, match="timed out"):
            c.complete(MSGS)
    assert len(fake.requests) == 2 and c.report()["retries"] == 1


def test_a_server_that_takes_no_connection_is_tried_max_retries_times_not_squared(caplog):
    """A full listen backlog: connecting times out. The openai client tries max_retries + 1
    times; the call is not sent again by our timeout handling on top (3 tries, not 9)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held = []
    for _ in range(3):  # fill the accept queue: further connections are not answered
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        held.append(s)
    cfg = LLMConfig(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    cfg.timeout = 0.3
    try:
        caplog.set_level(logging.INFO, logger="openai")
        c = LLMClient(cfg)
        with pytest.raises(LLMError, match="took no request within .* 3 tries"):
            c.complete(MSGS)
    finally:
        for s in [*held, srv]:
            s.close()
    tries = sum("Retrying request" in r.getMessage() for r in caplog.records)
    assert tries == 2 and c.report()["retries"] == 0


def test_an_error_that_only_mentions_upstream_keeps_streaming():
    with FakeOpenAI(lambda req: distinct(2)) as fake:
        fake.script = [{"status": 400, "message": "upstream provider rejected the request"}]
        c = client(fake)
        with pytest.raises(LLMError, match="HTTP 400"):
            c.complete(MSGS)
        c.complete([{"role": "user", "content": "again"}])
    assert [bool(r.get("stream")) for r in fake.requests] == [True, True]


def test_replies_stream_by_default_from_a_local_endpoint_only(monkeypatch):
    """A local server streams (small local models loop: a cut saves minutes); a cloud endpoint
    does not (reading every piece costs client CPU: the bulk run at concurrency 64 fell from ~90 %
    to 55-68 % of its bound). ALLABEL_LLM_STREAM=0/1 decides either way."""
    for var in ("ALLABEL_LLM_STREAM", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert LLMConfig.from_env().stream is False  # api.openai.com
    for url, local in [
        ("https://api.deepseek.com/v1", False),
        ("http://127.0.0.1:8080/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://192.168.1.20:8000/v1", True),
    ]:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        monkeypatch.delenv("ALLABEL_LLM_STREAM", raising=False)
        assert LLMConfig.from_env().stream is local, url
        monkeypatch.setenv("ALLABEL_LLM_STREAM", "0" if local else "1")
        assert LLMConfig.from_env().stream is not local, url
    with FakeOpenAI() as fake:  # on loopback: local
        LLMClient(LLMConfig(api_key="k", base_url=fake.base_url)).complete(MSGS, prompt_tokens=4)
        assert len(fake.streamed) == 1 and fake.requests[0]["stream"]
        cloud = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, stream=False))
        cloud.complete([{"role": "user", "content": "other"}], prompt_tokens=4)
        assert len(fake.streamed) == 1 and "stream" not in fake.requests[1]  # one JSON body
