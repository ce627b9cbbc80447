"""What keeps the bulk run near its bound at high concurrency (issue 17 §4): the first round's
connections stay in each thread's own pool, a reply is parsed once, and the command line's
output lines are made as tasks finish, not after the last reply (real ``openai`` client
against ``tests/fake_openai.py``)."""

import argparse
import gc
import json
import threading

import pytest

from alllabel.cli.prelabel import _line, _report
from alllabel.llm.client import POOL_SIZE, LLMClient, LLMConfig, run_bounded
from alllabel.prelabel.annotation import PreAnnotation
from alllabel.prelabel.holds import cost_cap
from alllabel.prelabel.pipeline import PipelineOutcome
from alllabel.prelabel.run import PrelabelResult, PrelabelResults
from alllabel.text.jsonl import write_jsonl
from tests.fake_openai import FakeOpenAI

SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def count_connections(fake: FakeOpenAI) -> list[int]:
    """The connections the fake's server accepts from now on (one handler thread each)."""
    accepted = []
    serve = fake.server.process_request

    def process_request(request, address):
        accepted.append(address[1])
        return serve(request, address)

    fake.server.process_request = process_request
    return accepted


def _warmed_cloud_client(fake: FakeOpenAI, concurrency: int) -> tuple[list, LLMClient]:
    """A client for a cloud endpoint's defaults (unstreamed: the fake is local) on ``fake`` (0.3 s
    a reply), once its connections are opened ahead; and the connections the fake accepts."""
    fake.latency = 0.3
    accepted = count_connections(fake)
    cloud = LLMConfig(api_key="k", base_url=fake.base_url, concurrency=concurrency, stream=False)
    client = LLMClient(cloud)
    client.warming.join()  # one connection per call in flight, each in its thread's pool
    return accepted, client


def test_a_first_round_of_format_probes_opens_one_connection_per_call_in_flight():
    """Every call of the first round probes json_schema (none has answered yet). Sent through
    one shared client, they all opened their connections in its pool, and the threads of the
    other pools used theirs in the second round: 24 connections for 16 calls in flight."""
    c = 2 * POOL_SIZE
    with FakeOpenAI() as fake:
        accepted, client = _warmed_cloud_client(fake, c)  # one connection per call in flight
        accepted.clear()
        msgs = [[{"role": "user", "content": f"task {i}"}] for i in range(3 * c)]
        results = run_bounded(lambda m: client.complete(m, schema=SCHEMA), msgs, c)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert fake.max_in_flight == c and client.response_format == "json_schema"
    assert [r["response_format"]["type"] for r in fake.requests] == ["json_schema"] * 3 * c
    assert accepted == []  # through one shared client: 8 more in its pool


def test_a_probe_refused_is_not_retried_and_falls_back_in_every_thread():
    with FakeOpenAI() as fake:
        fake.refuse_json_schema = True
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, concurrency=4))
        msgs = [[{"role": "user", "content": f"task {i}"}] for i in range(4)]
        barrier = threading.Barrier(4)

        def ask(m):
            barrier.wait()  # four probes in flight at once
            return client.complete(m, schema=SCHEMA)

        results = run_bounded(ask, msgs, 4)
    assert not [r for r in results if isinstance(r, Exception)], results
    kinds = [r["response_format"]["type"] for r in fake.requests]
    # each refusal once (a retried 500 would be sent max_retries times more), then json_object
    assert kinds.count("json_schema") <= 4 and kinds.count("json_object") == 4
    assert client.response_format == "json_object"


def test_a_reply_is_parsed_once_and_still_read_whole(monkeypatch):
    """The bill's parse of the body is the one the reply is read from: usage, log-probabilities,
    the text (a second ``json.loads`` of a body with logprobs cost 0.1 ms a call)."""
    with FakeOpenAI(lambda req: '{"entities": []}', logprob=-0.25) as fake:
        # One JSON body a call: a cloud endpoint's default (the fake on loopback would stream).
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, stream=False))
        loads, parsed = json.loads, []

        def counting(s, *a, **kw):
            data = loads(s, *a, **kw)
            if isinstance(data, dict) and "choices" in data:  # a reply (the fake is in-process)
                parsed.append(len(s))
            return data

        monkeypatch.setattr(json, "loads", counting)
        reply = client.complete([{"role": "user", "content": "Input:\nZIF-8"}])
        monkeypatch.setattr(json, "loads", loads)
    assert len(parsed) == 1
    assert reply.text == '{"entities": []}' and reply.completion_tokens > 0
    assert (reply.prompt_tokens, reply.completion_tokens) == fake.billed[0]
    assert reply.logprobs and {lp for _, lp in reply.logprobs} == {-0.25}


def test_a_reply_cut_at_the_cap_is_still_refused_from_the_parsed_body():
    with FakeOpenAI() as fake:
        fake.truncate = True
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, max_tokens=32))
        with pytest.raises(Exception) as e:
            client.complete([{"role": "user", "content": "hi"}])
    assert getattr(e.value, "truncated", False) and e.value.usage == fake.billed[0]


def test_the_output_uses_the_lines_made_as_tasks_finished(tmp_path):
    """``_report`` writes the line made when a task finished (during the run) for that same
    result, and makes the others (held, carried over, or a result replaced since) itself; the
    file is what writing every record at the end gave."""
    records = [{"id": f"t{i}", "text": f"text {i}"} for i in range(4)]
    texts = [r["text"] for r in records]
    done = PrelabelResult(0, PreAnnotation([], 0.9, "llm", "logprobs"))
    failed = PrelabelResult(1, None, "LLMError: boom")
    held = PrelabelResult(2, None, held=cost_cap(1.0, 1.0))
    carried = PrelabelResult(3, PreAnnotation([], 0.9, "llm", "logprobs"))
    outcome = PipelineOutcome(
        carried={3: (carried, 0)}, results=PrelabelResults([done, failed, held])
    )
    expected = tmp_path / "expected.jsonl"
    write_jsonl(
        expected,
        [
            {"id": "t0", "text": "text 0", "prediction": done.annotation.to_dict()},
            {"id": "t1", "text": "text 1", "error": "LLMError: boom"},
            {"id": "t2", "text": "text 2", "held": held.held.message},
            {"id": "t3", "text": "text 3", "prediction": carried.annotation.to_dict()},
        ],
    )
    args = argparse.Namespace(output=str(tmp_path / "out.jsonl"), max_cost=None)
    lines = {0: (done, _line(records, texts, done)), 1: (failed, _line(records, texts, failed))}
    assert _report(args, records, texts, {}, outcome, lines) == 1  # one failed
    assert (tmp_path / "out.jsonl").read_text() == expected.read_text()
    lines = {0: (done, '{"made": "during the run"}\n'), 1: (object(), "a stale line\n")}
    _report(args, records, texts, {}, outcome, lines)
    out = (tmp_path / "out.jsonl").read_text().splitlines()
    assert (
        out[0] == '{"made": "during the run"}' and json.loads(out[1])["error"] == "LLMError: boom"
    )


def test_a_bulk_run_finds_its_connections_opened_while_it_was_planned():
    """Opened ahead, one per call in flight, each in the pool its thread will use: the first
    round opens none (64 at once delayed its calls by 25-235 ms on the bench's endpoint)."""
    c = 2 * POOL_SIZE
    with FakeOpenAI() as fake:
        accepted, client = _warmed_cloud_client(fake, c)
        ahead = len(accepted)
        msgs = [[{"role": "user", "content": f"task {i}"}] for i in range(2 * c)]
        results = run_bounded(client.complete, msgs, c)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert fake.max_in_flight == c and len(fake.requests) == 2 * c  # no chat call to open them
    assert ahead >= c and len(accepted) == ahead  # discover's own GETs, and c opened ahead


def test_a_few_calls_at_a_time_open_nothing_ahead():
    with FakeOpenAI() as fake:
        client = LLMClient(LLMConfig(api_key="k", base_url=fake.base_url, concurrency=POOL_SIZE))
    assert client.warming is False


def test_the_heap_made_before_a_run_is_left_out_of_full_collections_while_it_runs():
    """A full pass of the garbage collector stops every thread (74 ms in a bulk run at
    concurrency 64): what was made before the calls is frozen while they run, for as long as any
    run is under way, and given back after the last."""
    second_started, first_done, second_checked = threading.Event(), threading.Event(), []

    def second(_):
        second_started.set()
        first_done.wait(timeout=10)  # the first run has ended, this one has not
        second_checked.append(gc.get_freeze_count())

    def first(_):
        second_started.wait(timeout=10)
        return gc.get_freeze_count()

    other = threading.Thread(target=run_bounded, args=(second, [0], 1))
    other.start()
    seen = run_bounded(first, range(4), 2)
    first_done.set()
    other.join()
    assert min(seen) > 0 and second_checked[0] > 0
    assert gc.get_freeze_count() == 0
