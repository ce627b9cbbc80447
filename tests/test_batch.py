"""The Batch API path: the real openai client against the fake's /v1/files and /v1/batches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from alllabel.llm.batch import batch_jobs
from alllabel.llm.client import LLMCache, LLMClient, LLMConfig, LLMError
from alllabel.prelabel.annotators import LLMAnnotator
from alllabel.prelabel.run import prelabel
from alllabel.text.jsonl import read_jsonl, write_jsonl
from tests.data import mof_records, mof_setup
from tests.fake_openai import FakeOpenAI, gold_responder

ROOT = Path(__file__).resolve().parents[1]
N = 16


@pytest.fixture(scope="module")
def mof():
    return mof_setup(N)


def batch_client(fake, path, **kw):
    cfg = LLMConfig(api_key="k", base_url=fake.base_url, batch=True, batch_poll=0.05, **kw)
    return LLMClient(cfg, LLMCache(path))


def input_lines(fake, n):
    """The JSONL lines of the n-th uploaded batch file."""
    b = list(fake.batches.values())[n]
    return fake.files[b["request"]["input_file_id"]]["content"].decode().splitlines()


def test_fake_batches_move_through_their_states(tmp_path):
    with FakeOpenAI(batch_timing=(0.3, 0.3)) as fake:
        api = openai.OpenAI(api_key="k", base_url=fake.base_url)
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Input:\nx"}]},
        }
        f = api.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch")
        b = api.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        seen = [b.status]
        while seen[-1] != "completed":
            time.sleep(0.05)
            seen.append(api.batches.retrieve(b.id).status)
        out = api.files.content(api.batches.retrieve(b.id).output_file_id).text
    assert list(dict.fromkeys(seen)) == ["validating", "in_progress", "completed"]
    assert json.loads(out)["custom_id"] == "a" and json.loads(out)["response"]["status_code"] == 200


def test_batch_run_gives_what_the_online_run_gives_at_half_price(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    with FakeOpenAI(gold_responder(gold_by_text), logprob=-0.1) as fake:
        client = batch_client(fake, tmp_path / "b.sqlite3")
        done = []
        batch = prelabel(
            texts, gold, LLMAnnotator(client, schema), sim, run_key="project-7", on_done=done.append
        )
        online_client = LLMClient(
            LLMConfig(api_key="k", base_url=fake.base_url), LLMCache(tmp_path / "o.sqlite3")
        )
        online = prelabel(texts, gold, LLMAnnotator(online_client, schema), sim)
        assert fake.uploads == 1 and len(fake.batches) == 1 and len(input_lines(fake, 0)) == N - 4
    assert [r.annotation.spans for r in batch] == [r.annotation.spans for r in online] and len(
        done
    ) == N - 4
    assert all(r.annotation.confidence_source == "logprobs" for r in batch)
    prices = client.config.prices()
    assert client.usage.batch_calls == N - 4 and client.usage.calls == 0
    assert client.usage.cost(prices) == pytest.approx(online_client.usage.cost(prices) / 2)
    (job,) = batch_jobs(client, "project-7")
    assert (
        job["status"] == "completed"
        and job["collected"] == 1
        and job["requests"] == N - 4
        and job["failed"] == 0
    )


def test_per_line_errors_fail_their_task_and_only_they_are_submitted_again(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    bad = texts[9]
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.batch_line_error = lambda body: (
            (400, "this request is malformed") if bad in body["messages"][-1]["content"] else None
        )
        results = prelabel(
            texts, gold, LLMAnnotator(batch_client(fake, tmp_path / "b.sqlite3"), schema), sim
        )
        failed = [r for r in results if r.status == "failed"]
        assert (
            [r.index for r in failed] == [9]
            and "HTTP 400" in failed[0].error
            and "malformed" in failed[0].error
        )
        fake.batch_line_error = None
        again = prelabel(
            texts, gold, LLMAnnotator(batch_client(fake, tmp_path / "b.sqlite3"), schema), sim
        )
        assert all(r.status == "done" for r in again)
        assert (
            fake.uploads == 2 and len(input_lines(fake, 1)) == 1 and bad in input_lines(fake, 1)[0]
        )


def test_a_restart_mid_batch_picks_up_the_batch_id_without_a_second_upload(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    db = tmp_path / "b.sqlite3"
    with FakeOpenAI(gold_responder(gold_by_text), batch_timing=(0.3, 0.5)) as fake:
        done = []
        first = prelabel(
            texts,
            gold,
            LLMAnnotator(batch_client(fake, db), schema),
            sim,
            run_key="p1",
            batch_wait=0,
            on_done=done.append,
        )
        assert (
            all(
                r.status == "held"
                and r.held.kind == "batch"
                and r.held.batch_ids == ("batch_1",)
                and "batch_1" in r.held.message
                for r in first
            )
            and done == []
        )
        # A new process: new client, new cache connection, same SQLite file.
        client = batch_client(fake, db)
        second = prelabel(texts, gold, LLMAnnotator(client, schema), sim, run_key="p1")
        assert (
            all(r.status == "done" for r in second) and fake.uploads == 1 and len(fake.batches) == 1
        )
        assert client.usage.batch_calls == N - 4


def test_a_crash_between_upload_and_batch_creation_reuses_the_uploaded_file(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    db = tmp_path / "b.sqlite3"
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.fail_batch_create = 1
        with pytest.raises(LLMError, match="creating the batch"):
            prelabel(texts, gold, LLMAnnotator(batch_client(fake, db, max_retries=0), schema), sim)
        assert fake.uploads == 1 and not fake.batches
        results = prelabel(texts, gold, LLMAnnotator(batch_client(fake, db), schema), sim)
        assert (
            all(r.status == "done" for r in results)
            and fake.uploads == 1
            and len(fake.batches) == 1
        )
        # Created on the server but its id never stored (killed right after): adopted, not re-created.
        client = batch_client(fake, db)
        queries = [15]
        gold2 = {**gold, **{i: spans[i] for i in range(4, 15)}}
        prelabel(texts, gold2, LLMAnnotator(client, schema), sim, queries=queries, batch_wait=0)
        client.cache.execute("UPDATE batch_jobs SET batch_id = NULL WHERE batch_id = 'batch_2'")
        last = prelabel(
            texts, gold2, LLMAnnotator(batch_client(fake, db), schema), sim, queries=queries
        )
        assert last[0].status == "done" and fake.uploads == 2 and len(fake.batches) == 2


def test_cost_cap_keeps_held_tasks_out_of_the_batch(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        annotator = LLMAnnotator(batch_client(fake, tmp_path / "b.sqlite3", max_tokens=512), schema)
        from alllabel.prelabel.annotators import build_demos

        plans = [
            annotator.prompts(texts[i], d)
            for i, d in zip(range(4, N), build_demos(texts, gold, sim, range(4, N), 3))
        ]
        cap = (
            sum(annotator.worst_case_usd(p, batch=True) for p in plans[:5]) + 1e-9
        )  # room for exactly 5 tasks
        results = prelabel(texts, gold, annotator, sim, max_cost_usd=cap)
        assert [r.status for r in results] == ["done"] * 5 + ["held"] * (N - 4 - 5)
        assert len(input_lines(fake, 0)) == sum(len(p.windows) for p in plans[:5])
        assert annotator.client.usage.cost(annotator.client.config.prices()) <= cap


def test_cli_batch_survives_being_killed_mid_batch(mof, tmp_path):
    recs = mof_records()[:N]
    path = tmp_path / "tasks.jsonl"
    write_jsonl(
        path,
        [
            {
                "id": i,
                "text": r["text"],
                **(
                    {
                        "entities": [
                            {k: e[k] for k in ("start", "end", "label")} for e in r["entities"]
                        ]
                    }
                    if i < 4
                    else {}
                ),
            }
            for i, r in enumerate(recs)
        ],
    )
    texts, _, _, gold_by_text, _ = mof
    cache, out = tmp_path / "c.sqlite3", tmp_path / "pre.jsonl"
    with FakeOpenAI(gold_responder(gold_by_text), batch_timing=(60, 60)) as fake:
        env = {
            **os.environ,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "k",
            "ALLABEL_LLM_BATCH": "1",
            "ALLABEL_LLM_BATCH_POLL": "0.05",
            "PYTHONPATH": str(ROOT),
        }
        args = [
            "prelabel",
            str(path),
            "-o",
            str(out),
            "--cache",
            str(cache),
            "--skip-quality",
            "--quiet",
        ]
        proc = subprocess.Popen(
            [sys.executable, "-m", "alllabel", *args],
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not fake.batches and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # polling now
            assert proc.poll() is None, proc.stderr.read()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert fake.uploads == 1 and not out.exists()
        fake.batch_timing = (0, 0.2)  # the provider gets to it
        r = subprocess.run(
            [sys.executable, "-m", "alllabel", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert fake.uploads == 1 and len(fake.batches) == 1
    got = read_jsonl(out)
    assert len(got) == N - 4 and all("prediction" in g for g in got)


def test_batch_lines_refusing_json_schema_weaken_the_format_for_the_next_submission(mof, tmp_path):
    texts, schema, spans, gold_by_text, sim = mof
    gold = {i: spans[i] for i in range(4)}
    with FakeOpenAI(gold_responder(gold_by_text)) as fake:
        fake.batch_line_error = lambda body: (
            (400, "response_format json_schema is not supported")
            if body["response_format"]["type"] == "json_schema"
            else None
        )
        client = batch_client(fake, tmp_path / "b.sqlite3")
        first = prelabel(texts, gold, LLMAnnotator(client, schema), sim)
        assert all(r.status == "failed" for r in first) and client.response_format == "json_object"
        again = prelabel(texts, gold, LLMAnnotator(client, schema), sim)
        assert all(r.status == "done" for r in again)
        assert {
            json.loads(line)["body"]["response_format"]["type"] for line in input_lines(fake, 1)
        } == {"json_object"}
