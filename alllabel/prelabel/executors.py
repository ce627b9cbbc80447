"""Executors: what answers prompts. One interface, ``execute(prompts) -> answers``, two ways:

* ``OnlineExecutor``: each prompt is one chat completion now (cached; the client's retries);
* ``BatchExecutor``: all prompts go through the Batch API (``alllabel.llm.batch.BatchRunner``);
  an answer is ready, failed, or pending in a batch still running (collected by a later call).

Each ``Answer`` carries what the endpoint billed for it (every attempt, failed ones too;
``alllabel.llm.billing``), and ``on_billed(usd)`` hears of every bill as it happens, so a
caller can persist spend at the time of the call, not only when a task succeeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from alllabel.llm.batch import BatchRunner
from alllabel.llm.client import Completion, LLMClient, LLMError
from alllabel.prelabel.fit import Window


@dataclass
class Answer:
    """One prompt's outcome: a completion, or an error, or a batch still running."""

    completion: Completion | None = None
    error: Exception | None = None
    pending: str | None = None  # the batch id the prompt waits in
    billed_usd: float = 0.0  # what the endpoint billed for it this time (0 when cached)

    @property
    def truncated(self) -> bool:
        return isinstance(self.error, LLMError) and self.error.truncated


class Executor(Protocol):
    batch: bool

    def execute(self, prompts: Sequence[Window]) -> list[Answer]: ...


class OnlineExecutor:
    """Answers each prompt at once, in order; stops at the first failure (the task fails)."""

    batch = False

    def __init__(
        self,
        client: LLMClient,
        schema: dict | None,
        validate: Callable[[str], object] | None,
        *,
        on_billed: Callable[[float], None] | None = None,
    ):
        self.client, self.schema, self.validate = client, schema, validate
        self.on_billed = on_billed

    def execute(self, prompts: Sequence[Window]) -> list[Answer]:
        out = []
        for w in prompts:
            try:
                c = self.client.complete(
                    w.messages,
                    validate=self.validate,
                    schema=self.schema,
                    prompt_tokens=w.prompt_tokens,
                )
                out.append(Answer(c, billed_usd=c.billed_usd))
            except Exception as e:  # noqa: BLE001 - recorded in the answer, with its bill
                out.append(Answer(error=e, billed_usd=getattr(e, "billed_usd", 0.0)))
            if self.on_billed is not None and out[-1].billed_usd:
                self.on_billed(out[-1].billed_usd)
            if out[-1].error is not None:
                break  # the task has failed: its other windows are not bought
        return out


class BatchExecutor:
    """Answers prompts through the Batch API, under ``run_key`` (a restarted process resumes)."""

    batch = True

    def __init__(
        self,
        client: LLMClient,
        schema: dict | None,
        validate: Callable[[str], object] | None,
        *,
        on_billed: Callable[[float], None] | None = None,
        run_key: str | None = None,
        wait: float | None = None,
    ):
        self.client, self.schema, self.validate = client, schema, validate
        self.on_billed = on_billed
        self.run_key, self.wait = run_key, wait

    def execute(self, prompts: Sequence[Window]) -> list[Answer]:
        keys = [self.client.cache_key(w.messages) for w in prompts]
        todo = dict(zip(keys, (w.messages for w in prompts)))
        run_key = (
            self.run_key or "run-" + hashlib.sha256("".join(sorted(todo)).encode()).hexdigest()[:16]
        )
        outcome = BatchRunner(self.client).run(
            todo, run_key=run_key, schema=self.schema, validate=self.validate, wait=self.wait
        )
        billed = sum(outcome.billed.values())
        if self.on_billed is not None and billed:
            self.on_billed(billed)
        out, seen = [], set()
        for k in keys:
            usd = 0.0 if k in seen else outcome.billed.get(k, 0.0)
            seen.add(k)
            if k in outcome.pending:
                out.append(Answer(pending=outcome.pending[k], billed_usd=usd))
            elif k in outcome.failed:
                cut = k in outcome.truncated
                err = LLMError(outcome.failed[k], retryable=True, truncated=cut)
                out.append(Answer(error=err, billed_usd=usd))
            else:
                try:
                    c = self.client.complete(todo[k], cache_only=True)
                    out.append(Answer(c, billed_usd=usd))
                except LLMError as e:
                    out.append(Answer(error=e, billed_usd=usd))
        return out
