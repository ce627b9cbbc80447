"""The backend on a real Label Studio against a real local LLM server, with the LLM defaults.

llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct (``tests/llama_server.py``) runs
one completion at a time, takes seconds to a minute a call on a loaded CPU, refuses
``json_schema`` with HTTP 500 and returns log-probabilities only when ``top_logprobs`` is asked
for, and ends a streamed reply when another call waits for its slot. Nothing is set for it but
its URL and model name: the concurrency adapts, the timeout is the local one, the format falls
back, and ``/status`` says so. A plumbing check, not a quality one.
"""

import pytest

from alllabel.llm.config import LLMConfig
from tests.data import mof_records
from tests.llama_server import MODEL_ALIAS, PYTHON
from tests.test_e2e_label_studio import BUDGET, LS, Backend, per_task

pytestmark = pytest.mark.skipif(
    not PYTHON.exists(), reason=".venv-llm is missing: scripts/install.sh test installs it"
)
N_TASKS = BUDGET + 3  # 3 pre-annotated: a first round of parallel calls, a few minutes


@pytest.fixture(scope="module")
def ls(label_studio):
    return label_studio


def test_defaults_pre_annotate_every_task_through_a_single_slot_llama_server(
    ls, llama_server, tmp_path
):
    api = LS(ls)
    # Short paragraphs from different papers: each is a call (no near-duplicate projected).
    records = [r for r in mof_records() if len(r["text"]) < 400][::5][:N_TASKS]
    defaults = LLMConfig()  # what the test helper would otherwise override, set back
    llm = {"model": MODEL_ALIAS, "concurrency": defaults.concurrency}
    llm["max_retries"] = defaults.max_retries
    # The session's server, shared with tests/test_llm_real_server.py (conftest.py).
    b = Backend(tmp_path, ls, llama_server, llm=llm, quality_check=False, project_duplicates=False)
    try:
        pid, rec_of = api.new_project("llama.cpp e2e", records)
        assert api.connect(pid, b.url).status_code == 201
        queued = lambda st: len(b.orch.state.queue(pid)) >= BUDGET  # noqa: E731
        b.wait_for(pid, queued, timeout=300, what="the queue")
        human = [q.task_id for q in b.orch.state.queue(pid)[:BUDGET]]
        for tid in human:
            api.annotate(tid, rec_of[tid])
        b.wait_for(pid, lambda st: st["phase"] == "done", timeout=1200, what="the run")
        b.idle(pid)
        status, usage = b.status(pid), b.orch.status()["llm_usage"]
        assert status["prelabels"]["failed"] == 0, status
        assert status["prelabels"]["done"] == N_TASKS - BUDGET
        assert b.orch.status()["llm_usage"]["calls"] == N_TASKS - BUDGET  # all through the LLM
        preds = per_task(api.predictions(pid))
        for tid in set(rec_of) - set(human):  # each pre-annotated once, at exact offsets
            (p,) = preds[tid]
            text = rec_of[tid]["text"]
            for r in p.result:  # exact offsets into the task's text
                v = r["value"]
                assert text[v["start"] : v["end"]] == v["text"]
    finally:
        b.stop()
    # What a user needs to know is in /status: no timeout, the fallback, where confidence is from.
    # Streamed replies: llama-cpp-python ends the running stream when another call waits for its
    # only slot; the client then sends one call at a time, so at most the first round is re-sent.
    assert usage["retries"] < defaults.concurrency and usage["failures"] == 0, usage
    # Streamed, the default for a local endpoint: llama-cpp-python sends no usage in a stream, so
    # those calls' tokens are estimated (a reply in one JSON body carries its usage).
    assert usage["tokens_estimated"] >= N_TASKS - BUDGET, usage
    assert usage["response_format"] == "json_object", usage  # json_schema refused (HTTP 500)
    assert usage["confidence_source"] == "logprobs", usage  # top_logprobs asked for
    # The concurrency in use is shown (whether a few calls were enough to bring it down depends on
    # their lengths; tests/test_llm_endpoint.py checks the adaptation against a serial server).
    assert 1 <= usage["concurrency_lowest"] <= usage["concurrency_ceiling"] == defaults.concurrency
