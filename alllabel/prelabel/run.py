"""A bulk run: retrieve -> prompt -> execute -> parse -> align -> score, within a cost cap.

``prepare_run`` retrieves each query's k demonstrations and (for a ``Prompted`` annotator) builds
its prompts: a ``Worklist``, made once and shared by ``estimate_run`` and ``prelabel``, no call
made. ``prelabel`` then has the prompts answered by the annotator's executor (online: tasks in
parallel, each admitted under the cap in task order; batch: every admitted task's prompts in one
Batch API run) and reads the answers back (``Prompted.read``: parse, align, score). A ``Direct``
annotator answers each task itself.

The cost cap is ``alllabel.prelabel.spend``: a task starts only while its worst case fits; when it
ends its worst case is replaced by what the endpoint billed for it, failed calls included. Held
tasks carry a structured ``Hold`` (``alllabel.prelabel.holds``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from alllabel.llm.client import LLMError, run_bounded
from alllabel.prelabel import holds
from alllabel.prelabel.annotation import PreAnnotation, apply_min_span_score
from alllabel.prelabel.annotators import Demo, Priced, Prompted, build_demos
from alllabel.prelabel.executors import Answer, Executor
from alllabel.prelabel.fit import TaskPrompts
from alllabel.prelabel.holds import Hold
from alllabel.prelabel.spend import SpendGuard
from alllabel.selection.similarity import Similarity

log = logging.getLogger(__name__)

# Replies waiting for ``online``'s reader beyond which a caller reads its own: when the CPU is
# starved the reader falls behind, and a backlog read after the last reply only delays the end.
READ_BACKLOG = 8


@dataclass
class PrelabelResult:
    index: int
    annotation: PreAnnotation | None
    error: str | None = None
    held: Hold | None = None  # why it was not attempted (cost cap, batch running): not a failure
    blocking: bool = False  # the endpoint refuses everyone (key, model, URL): retrying cannot help
    truncated: bool = False  # failed: the reply was cut at max_tokens
    billed_usd: float = 0.0  # what the endpoint billed for it in this run

    @property
    def status(self) -> str:
        return "done" if self.annotation is not None else "held" if self.held else "failed"


class PrelabelResults(list):
    """``prelabel``'s results in query order, plus what the run counted against its cost cap."""

    cost_usd: float = 0.0  # settled cost counted against the cap (spent_usd + answers used)
    billed_usd: float = 0.0  # what the endpoint billed during this run, failed calls included
    stopped_at: int | None = None  # the first task held by the cost cap

    @property
    def held(self) -> list[PrelabelResult]:
        return [r for r in self if r.held]

    def hold(self) -> Hold | None:
        """The run's hold (its first held task's), counting every held task."""
        held = [r.held for r in self.held if r.held.kind != "stopped"]
        return holds.with_tasks(held[0], len(held)) if held else None


@dataclass
class Worklist:
    """What a bulk run will send: each query's demonstrations and (if prompted) its prompts."""

    queries: list[int]
    demos: list[list[Demo]]
    prompts: list[TaskPrompts | None]


def unlabeled(texts: Sequence[str], gold: dict[int, list[dict]]) -> list[int]:
    """Indices of the tasks without gold spans: the default queries."""
    return [i for i in range(len(texts)) if i not in gold]


def prepare_run(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    queries: Sequence[int] | None = None,
    k: int = 3,
) -> Worklist:
    """Retrieve and prompt (no call): the ``Worklist`` of a run."""
    if not gold:
        raise ValueError(
            "no annotated tasks to learn from: annotate some tasks first (or lower the budget)"
        )
    queries = unlabeled(texts, gold) if queries is None else list(queries)
    demos = build_demos(texts, gold, sim, queries, k)
    if isinstance(annotator, Prompted):
        prompts = [annotator.prompts(texts[i], d) for i, d in zip(queries, demos)]
        return Worklist(queries, demos, prompts)
    return Worklist(queries, demos, [None] * len(queries))


def current_versions(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    queries: Sequence[int],
    k: int = 3,
) -> dict[int, dict]:
    """The version each query's pre-annotation would carry if made now (no LLM call)."""
    work = prepare_run(texts, gold, annotator, sim, queries=queries, k=k)
    return {i: annotator.version(d, p) for i, d, p in zip(work.queries, work.demos, work.prompts)}


def prelabel(
    texts: Sequence[str],
    gold: dict[int, list[dict]],
    annotator,
    sim: Similarity,
    *,
    queries: Sequence[int] | None = None,
    k: int = 3,
    concurrency: int = 1,
    on_done: Callable[[PrelabelResult], None] | None = None,
    max_cost_usd: float | None = None,
    spent_usd: float = 0.0,
    min_span_score: float | None = None,
    run_key: str | None = None,
    batch_wait: float | None = None,
    run: Worklist | None = None,
    stop: threading.Event | None = None,
    executor: Executor | None = None,
    on_billed: Callable[[float], None] | None = None,
    ledger: bool = False,
) -> PrelabelResults:
    """Pre-annotate ``queries`` (default: every task without gold spans) from the annotated ones.

    ``gold`` maps task index -> spans ({start, end, label}). One task's failure is recorded in
    its result and never stops the others. ``on_done`` is called for each task done or failed
    (never for held ones, which are only in the returned list).

    ``max_cost_usd``: stop cleanly at this cap; ``spent_usd`` already counts toward it. Without
    a ``ledger`` of the caller's (``spent_usd`` then holds everything billed before), answers
    from the cache count at the price they were bought, so a re-run with the same cap buys
    nothing; with one, they are free. ``on_billed(usd)`` hears of every bill at once.
    ``min_span_score``: drop weaker spans. ``executor``: default the annotator's (the Batch API
    with ``ALLABEL_LLM_BATCH``, under ``run_key``, polled ``batch_wait`` seconds at most; tasks
    whose batch still runs come back held). ``run``: the ``prepare_run`` of these arguments, if
    made already (``queries``/``k`` then unused). ``stop``: once set, tasks not started yet come
    back held: a process shutting down does not wait for the rest of a long run."""
    work = run or prepare_run(texts, gold, annotator, sim, queries=queries, k=k)
    max_cost_usd = _cap_for(annotator, max_cost_usd)
    if isinstance(annotator, Prompted) and executor is None:
        executor = annotator.executor(on_billed=on_billed, run_key=run_key, wait=batch_wait)
    r = _Run(texts, annotator, work, SpendGuard(max_cost_usd, spent_usd), executor, not ledger)
    r.on_done, r.min_span_score, r.stop = on_done, min_span_score, stop
    if executor is not None and executor.batch:
        r.batch()
    else:
        r.online(concurrency)
    capped = [x for x in r.results if x.held is not None and x.held.kind == "cost_cap"]
    if capped:  # the cause is known only once every admitted task has ended
        final = r.cap_hold()
        for x in capped:
            x.held = final
    r.results.cost_usd = r.guard.committed
    r.results.billed_usd = sum(x.billed_usd for x in r.results if x is not None)
    stopped = r.guard.stopped_at
    r.results.stopped_at = None if stopped is None else work.queries[stopped]
    return r.results


class _Counter:
    """A count under its own lock (``with counter: counter.n += 1``)."""

    def __init__(self):
        self.n, self._lock = 0, threading.Lock()

    def __enter__(self):
        self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()


def _outcome(r: object) -> object:
    """A task's result, or the error it raised, from ``online``'s reader or its caller."""
    if not isinstance(r, Future):
        return r
    try:
        return r.result()
    except Exception as e:  # noqa: BLE001 - recorded in the task's result, never raised
        return e


def _cap_for(annotator, max_cost_usd: float | None) -> float | None:
    """The cap that applies: none for an annotator without prices (it costs nothing); an
    error for a priced one whose prices are unknown."""
    if max_cost_usd is None:
        return None
    if not isinstance(annotator, Priced):
        return None
    if annotator.prices() is None:
        raise ValueError(
            f"a cost cap needs prices for {annotator.name}: set ALLABEL_PRICE_INPUT and "
            "ALLABEL_PRICE_OUTPUT"
        )
    return max_cost_usd


class _Run:
    """One ``prelabel`` call's state: the cap, the results, and how each task is finished."""

    def __init__(self, texts, annotator, work: Worklist, guard: SpendGuard, executor, at_price):
        self.texts, self.annotator, self.work = texts, annotator, work
        self.guard, self.executor, self.at_price = guard, executor, at_price
        self.results = PrelabelResults([None] * len(work.queries))
        self.on_done = self.min_span_score = self.stop = None
        self._reader, self._backlog = None, _Counter()  # ``online``'s reader and its queue

    def finish(self, j: int, result: PrelabelResult) -> PrelabelResult:
        if result.annotation is not None and self.min_span_score is not None:
            result.annotation = apply_min_span_score(result.annotation, self.min_span_score)
        self.results[j] = result
        if self.on_done is not None and not result.held:
            self.on_done(result)
        return result

    def worst(self, j: int, batch: bool) -> float:
        if self.guard.max_usd is None or not isinstance(self.annotator, Priced):
            return 0.0
        return self.annotator.worst_case_usd(
            self.work.prompts[j], batch=batch, cached_at_price=self.at_price
        )

    def cap_hold(self) -> Hold:
        g = self.guard
        cause = None
        if g.failed_usd > 0 and g.succeeded == 0 or g.failed_usd > (g.committed - g.failed_usd):
            cause = (
                "the replies are cut at ALLABEL_LLM_MAX_TOKENS (raise it, or lower "
                "ALLABEL_MAX_PROMPT_TOKENS)"
                if g.truncated
                else f"US${g.failed_usd:.4f} went to calls that failed"
            )
        return holds.cost_cap(g.max_usd, g.total, cause=cause)

    def online(self, concurrency: int) -> None:
        # A caller sends its next prompt as soon as its reply is in and billed; one reader thread
        # parses, aligns, scores and reports behind the callers (reading in each caller delayed
        # every next call by the time it took: issue 17, concurrency 64).
        with ThreadPoolExecutor(1, thread_name_prefix="prelabel-read") as self._reader:
            raw = run_bounded(self._one, range(len(self.work.queries)), concurrency)
            raw = [_outcome(r) for r in raw]
        for j, r in enumerate(raw):
            if not isinstance(r, PrelabelResult):  # an unexpected error: recorded, never raised
                self.finish(
                    j, PrelabelResult(self.work.queries[j], None, f"{type(r).__name__}: {r}")
                )

    def _one(self, j: int) -> PrelabelResult | Future:
        """Task ``j`` online: admitted under the cap, called, settled; read now or behind."""
        if self.stop is not None and self.stop.is_set():
            return self.finish(j, PrelabelResult(self.work.queries[j], None, held=holds.stopped()))
        if self.guard.max_usd is not None:  # admission in task order
            worst = float("inf")
            try:
                worst = self.worst(j, False)
            finally:  # every task takes its admission turn, or later ones would wait forever
                admitted = self.guard.admit(j, j, worst)
            if not admitted:
                return self.finish(
                    j, PrelabelResult(self.work.queries[j], None, held=self.cap_hold())
                )
        if self.work.prompts[j] is None:  # a direct annotator: no call to overlap
            return self.finish(j, self.attempt(j))
        answers = self.executor.execute(self.work.prompts[j].windows)
        self.settle(j, answers)  # before the next admission, as the cap needs
        with self._backlog:
            behind = self._backlog.n >= READ_BACKLOG
            self._backlog.n += not behind
        if behind:  # a starved CPU: the reader lags, the callers read as they go
            return self.finish(j, self.read(j, answers))
        return self._reader.submit(self._read_behind, j, answers)

    def _read_behind(self, j: int, answers: list[Answer]) -> PrelabelResult:
        try:
            return self.finish(j, self.read(j, answers))
        finally:
            with self._backlog:
                self._backlog.n -= 1

    def attempt(self, j: int, answers: list[Answer] | None = None) -> PrelabelResult:
        """Execute (unless ``answers`` are given) -> settle the task's cost -> read."""
        i, demos, prompts = self.work.queries[j], self.work.demos[j], self.work.prompts[j]
        if prompts is None:
            result = PrelabelResult(i, self.annotator.annotate(self.texts[i], demos))
            self.guard.settle(j, 0.0)
            return result
        answers = self.executor.execute(prompts.windows) if answers is None else answers
        self.settle(j, answers)
        return self.read(j, answers)

    def settle(self, j: int, answers: list[Answer]) -> None:
        """The task's worst case replaced by its bill: the answers' (and, without a ledger of the
        caller's, cached answers at the price they were bought) or, after an error, the bill."""
        billed = sum(a.billed_usd for a in answers)
        error = next((a for a in answers if a.error is not None), None)
        if error is None:
            self.guard.settle(j, billed + self._cached_cost(answers))
        else:
            self.guard.settle(j, billed, failed=True, truncated=error.truncated)

    def read(self, j: int, answers: list[Answer]) -> PrelabelResult:
        """Parse -> align -> score settled ``answers``; a reply that cannot be read fails the task
        (its cost then counts as spent on failures)."""
        i, demos, prompts = self.work.queries[j], self.work.demos[j], self.work.prompts[j]
        billed = sum(a.billed_usd for a in answers)
        error = next((a for a in answers if a.error is not None), None)
        if error is None:
            try:
                a = self.annotator.read(
                    self.texts[i], demos, prompts, [x.completion for x in answers]
                )
                return PrelabelResult(i, a, billed_usd=billed)
            except (LLMError, ValueError) as e:
                error = Answer(error=e)
                self.guard.failed_after(billed, self._cached_cost(answers), error.truncated)
        e = error.error
        log.warning("task %d: pre-annotation failed: %s", i, e)
        blocking = isinstance(e, LLMError) and e.status in (401, 403, 404)
        return PrelabelResult(
            i,
            None,
            f"{type(e).__name__}: {e}",
            blocking=blocking,
            truncated=error.truncated,
            billed_usd=billed,
        )

    def _cached_cost(self, answers: list[Answer]) -> float:
        """Answers read from the cache, not billed in this run, at the price they were bought
        (only for a caller that keeps no spend ledger of its own)."""
        if not self.at_price or not isinstance(self.annotator, Priced):
            return 0.0
        prices = self.annotator.prices()
        return sum(
            a.completion.cost(prices) or 0.0
            for a in answers
            if a.completion.cached and not a.billed_usd
        )

    def batch(self) -> None:
        n = len(self.work.queries)
        admitted = [j for j in range(n) if self.guard.admit(j, j, self.worst(j, True))]
        windows = [w for j in admitted for w in self.work.prompts[j].windows]
        answers = iter(self.executor.execute(windows))
        taken = {j: [next(answers) for _ in self.work.prompts[j].windows] for j in admitted}
        for j in range(n):
            i = self.work.queries[j]
            if j not in taken:
                self.finish(j, PrelabelResult(i, None, held=self.cap_hold()))
                continue
            pending = [a.pending for a in taken[j] if a.pending]
            if pending:
                billed = sum(a.billed_usd for a in taken[j])
                self.guard.settle(j, billed)
                self.finish(
                    j,
                    PrelabelResult(
                        i, None, held=holds.waiting_for_batch(pending), billed_usd=billed
                    ),
                )
            else:
                self.finish(j, self.attempt(j, taken[j]))
