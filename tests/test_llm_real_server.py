"""The CLI against a real OpenAI-compatible server: llama.cpp with SmolLM2-135M (tests/llama_server.py).

A plumbing check, not a quality one (a 135M model is not GPT-4o), with the LLM defaults: only the
URL and the model name are set. The real server refuses ``json_schema`` with HTTP 500, so the
client falls back to ``json_object`` once, says so and remembers it for the next run; it serves
one completion at a time, so the concurrency comes down with no timeout; it returns
log-probabilities because ``top_logprobs`` is asked for; every span kept is at exact offsets.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data import mof_records
from tests.llama_server import PYTHON

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not PYTHON.exists() and not os.environ.get("CI"),
    reason=".venv-llm is missing: scripts/install.sh test installs the llama.cpp server",
)


def test_prelabel_through_a_real_llama_cpp_server(llama_server, tmp_path):
    llama = llama_server  # shared with tests/test_e2e_llama.py (conftest.py)
    # 4 demonstrations, 3 tasks: enough for a first round of parallel calls that the single slot
    # interrupts, and a few minutes of CI time (each call here is a 1,000-token prompt).
    recs = [r for r in mof_records() if len(r["text"]) < 500][:7]
    records = [
        {
            "id": r["id"],
            "text": r["text"],
            **({"entities": [{k: e[k] for k in ("start", "end", "label")} for e in r["entities"]]} if i < 4 else {}),
        }
        for i, r in enumerate(recs)
    ]  # fmt: skip
    data, out = tmp_path / "tasks.jsonl", tmp_path / "pre.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLABEL_")}
    env |= {
        "OPENAI_BASE_URL": llama.base_url, "OPENAI_API_KEY": "local",
        "ALLABEL_LLM_MODEL": "smollm2-135m-instruct", "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    argv = [sys.executable, "-m", "alllabel", "-v", "prelabel", str(data), "-o", str(out),
            "--k", "2", "--skip-quality", "--cache", str(tmp_path / "cache.sqlite3"), "--quiet"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: some task failed (reported per task)
    assert "refused response_format json_schema (HTTP 500)" in r.stderr  # llama.cpp's refusal
    usage = json.loads(r.stderr.split("LLM usage: ", 1)[1].splitlines()[0])
    # Only streams the server ended because another call waited are sent again (at most the
    # first round: then one call at a time); nothing timed out.
    assert usage["retries"] < 4 and "timed out" not in r.stderr, usage
    assert usage["confidence_source"] == "logprobs" and usage["response_format"] == "json_object"
    assert usage["concurrency_ceiling"] == 4 and "concurrency_lowest" in usage  # in use, shown
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [rec["id"] for rec in records[4:]]
    done = [row for row in rows if "prediction" in row]
    assert done, f"no task pre-annotated: {[row.get('error') for row in rows]}"
    for row in done:
        for e in row["prediction"]["entities"]:
            assert row["text"][e["start"] : e["end"]] == e["text"]  # exact offsets
    for row in rows:
        assert "prediction" in row or row["error"]  # every task: a result or its reason
    # A second run with another task knows the format: no json_schema probe this time.
    records.append({"id": "extra", "text": recs[0]["text"] + " Again."})
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    # Only the new task (--ids): one call, not the tasks whose demonstrations the new text reorders.
    argv += ["--ids", "extra"]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert "refused response_format" not in r.stderr and "HTTP/1.1 500" not in r.stderr
    again = json.loads(r.stderr.split("LLM usage: ", 1)[1].splitlines()[0])
    assert again["calls"] == 1 and again["response_format"] == "json_object", again
