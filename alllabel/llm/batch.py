"""The Batch API: bulk answers at half price for work that can wait (``ALLABEL_LLM_BATCH=1``).

``BatchRunner(client).run(prompts, run_key=...)`` takes the prompts a run needs (cache key ->
messages) and makes sure each one ends up answered in the LLM cache, where the ordinary path
(parse, align, score) reads it back - so batch answers go through exactly the same code:

1. Prompts already cached cost nothing. Prompts already inside a batch that is still open (from
   this run or any earlier one, including a process that was killed) wait for that batch: nothing
   is uploaded or paid twice.
2. The rest is written as JSONL (``custom_id`` = cache key, ``/v1/chat/completions`` bodies),
   uploaded through the Files API (purpose ``batch``) and submitted to ``/v1/batches`` with
   metadata naming the run key. The file id is stored before the batch is created and the batch id
   right after, so a restart between the two adopts the batch the server already has.
3. Open batches are polled every ``ALLABEL_LLM_BATCH_POLL`` seconds until they end (``wait=None``)
   or for ``wait`` seconds. An ended batch is collected once: each output line is validated and
   cached at the batch price (``batch_price_factor``); lines in the error file, lines that fail
   validation and lines never processed (expired, cancelled, failed batch) are reported as failures
   and, not being cached, are submitted again by the next run. Error lines refusing the
   ``response_format`` weaken it (json_schema -> json_object -> none) for the next submission.

The bookkeeping lives in the LLM cache's SQLite file (tables ``batch_jobs``, ``batch_requests``),
keyed by the caller's run key (e.g. a project id), so any new process on the same file resumes.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import openai

from alllabel.llm.client import Completion, LLMClient, LLMError, completion_from_json
from alllabel.llm.config import token_cost

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batch_jobs (job INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT NOT NULL, "
    "input_file_id TEXT, batch_id TEXT, status TEXT NOT NULL, created REAL NOT NULL, collected INTEGER NOT NULL DEFAULT 0, "
    "requests INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, message TEXT)",
    "CREATE TABLE IF NOT EXISTS batch_requests (job INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (job, key))",
    "CREATE TABLE IF NOT EXISTS batch_failures (job INTEGER NOT NULL, key TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (job, key))",
)


@dataclass
class BatchOutcome:
    """Where each prompt of a run stands after ``BatchRunner.run``."""

    done: set[str] = field(default_factory=set)  # answered: in the cache now
    failed: dict[str, str] = field(
        default_factory=dict
    )  # key -> why (re-submitted by the next run)
    pending: dict[str, str] = field(default_factory=dict)  # key -> batch id still running
    submitted: list[str] = field(default_factory=list)  # batch ids created by this call
    # key -> US$ billed for its line, for lines this call collected (failed lines included)
    billed: dict[str, float] = field(default_factory=dict)
    truncated: set[str] = field(default_factory=set)  # failed: the reply was cut at max_tokens


def batch_jobs(client: LLMClient, run_key: str | None = None) -> list[dict]:
    """The batches recorded in the client's cache database (for a status page), newest first."""
    db = _db(client)
    rows = db.execute(
        "SELECT job, run_key, batch_id, status, created, collected, requests, failed, message FROM batch_jobs"
        + (" WHERE run_key = ?" if run_key is not None else "")
        + " ORDER BY job DESC",
        (run_key,) if run_key is not None else (),
    )
    names = (
        "job",
        "run_key",
        "batch_id",
        "status",
        "created",
        "collected",
        "requests",
        "failed",
        "message",
    )
    return [dict(zip(names, r)) for r in rows]


def _db(client: LLMClient):
    if client.cache is None:
        raise ValueError(
            "the Batch API needs the LLM cache (its answers and batch ids are kept there): set a cache file"
        )
    for sql in _SCHEMA:
        client.cache.execute(sql)
    return client.cache


class BatchRunner:
    def __init__(
        self,
        client: LLMClient,
        *,
        poll: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.client = client
        self.db = _db(client)
        self.poll = client.config.batch_poll if poll is None else poll
        self._sleep = sleep

    # --- public ------------------------------------------------------------------------------------
    def run(
        self,
        prompts: dict[str, list[dict]],
        *,
        run_key: str,
        schema: dict | None = None,
        validate: Callable[[str], object] | None = None,
        wait: float | None = None,
    ) -> BatchOutcome:
        """Answer ``prompts`` (cache key -> messages) through batches; see the module doc."""
        out = BatchOutcome()
        cache = self.client.cache
        todo = {k: m for k, m in prompts.items() if cache.get(k) is None}
        out.done = set(prompts) - set(todo)
        jobs = self._open_jobs()
        waiting = {job: keys & todo.keys() for job, keys in jobs.items()}
        waiting = {job: keys for job, keys in waiting.items() if keys}
        covered = set().union(*waiting.values()) if waiting else set()
        fresh = {k: m for k, m in todo.items() if k not in covered}
        if fresh:
            job = self._submit(fresh, run_key, schema)
            waiting[job] = set(fresh)
            out.submitted.append(self._batch_id(job))
        deadline = None if wait is None else time.monotonic() + wait
        while waiting:
            for job in list(waiting):
                batch = self._refresh(job)
                if batch is not None and batch.status in TERMINAL:
                    out.billed.update(self._collect(job, batch, validate, out.truncated))
            # Whatever a collected job answered is cached now; the rest of its keys failed.
            for job in [j for j in waiting if self._collected(j)]:
                keys = waiting.pop(job)
                for k in keys:
                    if cache.get(k) is not None:
                        out.done.add(k)
                    else:
                        out.failed[k] = self._failure(job, k)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            self._sleep(
                self.poll
                if deadline is None
                else max(0.0, min(self.poll, deadline - time.monotonic()))
            )
        for job, keys in waiting.items():
            bid = self._batch_id(job) or "(not created yet)"
            out.pending.update((k, bid) for k in keys)
        return out

    # --- bookkeeping -------------------------------------------------------------------------------
    def _open_jobs(self) -> dict[int, set[str]]:
        rows = self.db.execute(
            "SELECT r.job, r.key FROM batch_requests r JOIN batch_jobs j ON j.job = r.job WHERE j.collected = 0"
        )
        jobs: dict[int, set[str]] = {}
        for job, key in rows:
            jobs.setdefault(job, set()).add(key)
        return jobs

    def _batch_id(self, job: int) -> str | None:
        return self.db.execute("SELECT batch_id FROM batch_jobs WHERE job = ?", (job,))[0][0]

    def _collected(self, job: int) -> bool:
        return bool(self.db.execute("SELECT collected FROM batch_jobs WHERE job = ?", (job,))[0][0])

    def _failure(self, job: int, key: str) -> str:
        rows = self.db.execute(
            "SELECT message FROM batch_failures WHERE job = ? AND key = ?", (job, key)
        )
        if rows:
            return rows[0][0]
        status = self.db.execute("SELECT status, message FROM batch_jobs WHERE job = ?", (job,))[0]
        return (
            f"batch {self._batch_id(job)} ended {status[0]} without an answer for this prompt"
            + (f": {status[1]}" if status[1] else "")
        )

    # --- the API -----------------------------------------------------------------------------------
    def _api(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as e:
            raise LLMError(
                f"Batch API: {what} failed with HTTP {e.status_code}: {e.message}",
                retryable=e.status_code >= 500,
                status=e.status_code,
            ) from e
        except openai.APIConnectionError as e:
            raise LLMError(
                f"Batch API: {what} failed: cannot reach the endpoint ({e})", retryable=True
            ) from e

    def _submit(self, prompts: dict[str, list[dict]], run_key: str, schema: dict | None) -> int:
        lines = [
            json.dumps(
                {
                    "custom_id": k,
                    "method": "POST",
                    "url": ENDPOINT,
                    "body": self.client.params(m, schema),
                },
                ensure_ascii=False,
            )
            for k, m in prompts.items()
        ]
        data = ("\n".join(lines) + "\n").encode()
        api = self.client.openai
        f = self._api(
            "uploading the requests",
            api.files.create,
            file=("alllabel-batch.jsonl", io.BytesIO(data)),
            purpose="batch",
        )
        rows = self.db.execute(
            "INSERT INTO batch_jobs (run_key, input_file_id, status, created, requests) VALUES (?, ?, 'uploaded', ?, ?) RETURNING job",
            (run_key, f.id, time.time(), len(prompts)),
        )
        job = rows[0][0]
        self.db.execute(
            "INSERT INTO batch_requests (job, key) VALUES (?, ?)",
            [(job, k) for k in prompts],
            many=True,
        )
        self._create(job, f.id, run_key)
        log.info(
            "Batch API: submitted %d request(s) as %s (run %s)",
            len(prompts),
            self._batch_id(job),
            run_key,
        )
        return job

    def _create(self, job: int, file_id: str, run_key: str):
        b = self._api(
            "creating the batch",
            self.client.openai.batches.create,
            input_file_id=file_id,
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={"alllabel_run_key": run_key[:512], "alllabel_job": str(job)},
        )
        self.db.execute(
            "UPDATE batch_jobs SET batch_id = ?, status = ? WHERE job = ?", (b.id, b.status, job)
        )
        return b

    def _refresh(self, job: int):
        """The job's batch as the server sees it now (created first if a restart came in between)."""
        bid, file_id, run_key = self.db.execute(
            "SELECT batch_id, input_file_id, run_key FROM batch_jobs WHERE job = ?", (job,)
        )[0]
        api = self.client.openai
        if bid is None:
            adopted = next(
                (
                    b
                    for b in self._api("listing batches", api.batches.list, limit=100)
                    if b.input_file_id == file_id
                ),
                None,
            )
            if adopted is None:
                return self._create(job, file_id, run_key)
            self.db.execute("UPDATE batch_jobs SET batch_id = ? WHERE job = ?", (adopted.id, job))
            bid = adopted.id
        b = self._api(f"polling {bid}", api.batches.retrieve, bid)
        self.db.execute("UPDATE batch_jobs SET status = ? WHERE job = ?", (b.status, job))
        return b

    def _lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        content = self._api(f"downloading {file_id}", self.client.openai.files.content, file_id)
        return [json.loads(line) for line in content.text.splitlines() if line.strip()]

    def _collect(
        self, job: int, batch, validate: Callable[[str], object] | None, truncated: set[str]
    ) -> dict[str, float]:
        """Cache the batch's answers; what each line was billed (truncated, unparseable too)."""
        keys = {
            k for (k,) in self.db.execute("SELECT key FROM batch_requests WHERE job = ?", (job,))
        }
        cache = self.client.cache
        failures: dict[str, str] = {}
        refused = False  # a refused response_format is weakened once per batch, not once per line
        billed: dict[str, float] = {}
        for line in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            key = line.get("custom_id")
            if key not in keys:
                continue
            response = line.get("response") or {}
            body = response.get("body") or {}
            if line.get("error") or response.get("status_code") != 200:
                err = line.get("error") or body.get("error") or {}
                message = str(err.get("message") or err)
                failures[key] = f"HTTP {response.get('status_code')} in batch {batch.id}: {message}"
                if not refused:
                    refused = self.client.refused_format(response.get("status_code"), message)
                continue
            billed[key] = self._billed(body)
            try:
                cache.put(key, self._answer(body, validate))
            except (LLMError, ValueError) as e:
                failures[key] = f"{type(e).__name__} in batch {batch.id}: {e}"
                if isinstance(e, LLMError) and e.truncated:
                    truncated.add(key)
        message = (
            "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data or []))
            if batch.errors
            else None
        )
        self.db.execute(
            "INSERT OR REPLACE INTO batch_failures (job, key, message) VALUES (?, ?, ?)",
            [(job, k, m) for k, m in failures.items()],
            many=True,
        )
        answered = sum(cache.get(k) is not None for k in keys)
        self.db.execute(
            "UPDATE batch_jobs SET collected = 1, status = ?, failed = ?, message = ? WHERE job = ?",
            (batch.status, len(keys) - answered, message, job),
        )
        log.info(
            "Batch API: collected %s (%s): %d answer(s), %d failure(s)",
            batch.id,
            batch.status,
            answered,
            len(keys) - answered,
        )
        return billed

    def _answer(self, body: dict, validate: Callable[[str], object] | None) -> Completion:
        """A 200 line's answer at the batch price; raises if it is cut or does not validate."""
        c = completion_from_json(body)
        factor = self.client.config.batch_price_factor
        c = Completion(
            c.text, c.prompt_tokens, c.completion_tokens, c.logprobs, price_factor=factor
        )
        self.client.usage.add(
            batch_calls=1,
            batch_prompt_tokens=c.prompt_tokens,
            batch_completion_tokens=c.completion_tokens,
        )
        if validate is not None:
            validate(c.text)
        return c

    def _billed(self, body: dict) -> float:
        """A 200 line's bill at the batch price: its usage, or the worst case if it reports none."""
        cfg = self.client.config
        usage = body.get("usage") or {}
        if usage.get("prompt_tokens") is None:
            usd = cfg.worst_case_usd(0, batch=True) or 0.0  # prompt unknown here: reply at most
        else:
            usd = (
                token_cost(
                    usage["prompt_tokens"], usage.get("completion_tokens") or 0, cfg.prices()
                )
                or 0.0
            ) * cfg.batch_price_factor
        self.client.usage.add(billed_usd=usd)
        return usd
