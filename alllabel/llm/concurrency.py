"""How many LLM calls are in flight at once: ``AdaptiveLimit``, fitted to the endpoint as it answers.

A cloud endpoint serves calls in parallel; a local server (llama.cpp, Ollama on a laptop) often
serves one at a time and queues the rest, so a queued call waits for all those ahead of it and
times out while it never ran. The limit therefore:

* starts at the configured concurrency, which is also its ceiling;
* halves when calls keep taking clearly longer than the fastest seen (2 in a row, or half a
  round): the gradient ``fastest / latency`` of Netflix's concurrency-limits, on the median
  of the last three latencies, both per unit of work (so long replies are not mistaken for
  queueing) and in seconds (so short replies from an endpoint with a fixed latency are not
  either): only a call slow in both counts (on a serial server both are about ``1 / limit``);
  drops to 1 at once on a timeout;
* grows again by 1 after ``limit * 2^lowered`` calls that kept up (fewer probes of a server that
  has refused them before), while ``limit + 1`` calls of the slowest latency seen lately would
  still end within half the timeout (on a serial server the last of n queued calls waits n
  latencies);
* is set by the endpoint where it reports a slot count (llama.cpp's ``/props`` ``total_slots``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx2

log = logging.getLogger(__name__)

# Header of the answer that stands for a timed-out chat completion (``TimeoutAnswer``).
TIMED_OUT = "x-alllabel-timed-out"

# Gradient (fastest / average latency per unit of work) below which the limit halves, above
# which a call counts as keeping up; a serial server at limit 2 sits at 0.5.
GRADIENT_LOW, GRADIENT_HIGH = 0.65, 0.8
RECENT = 3  # latencies whose median is compared with the fastest (one spike is not a trend)
WINDOW = 32  # latencies remembered for the fastest / slowest


def work_units(prompt_tokens: int, completion_tokens: int) -> float:
    """A call's work, in generated-token equivalents: prompt tokens are read several times faster
    than reply tokens are written (llama.cpp on a CPU: ~230 against ~80 per second)."""
    return completion_tokens + prompt_tokens / 8 + 8


class AdaptiveLimit:
    """``with limit.slot(): call()``; then ``limit.done(seconds, work)`` or ``limit.timed_out()``."""

    def __init__(self, ceiling: int, timeout: float):
        self.ceiling = max(1, ceiling)
        self.timeout = timeout
        self.limit = self.ceiling
        self.in_flight = 0
        self.lowest = self.ceiling  # the lowest limit reached (reported)
        self.lowered = 0  # times the limit went down
        self.fixed = False  # the endpoint told us its slot count
        self._per_unit: deque[float] = deque(maxlen=WINDOW)
        self._latency: deque[float] = deque(maxlen=WINDOW)
        self._good = self._slow = 0
        self._cond = threading.Condition()

    def set_slots(self, slots: int) -> None:
        """The endpoint's own count of parallel slots: use it (within the ceiling), stop adapting."""
        with self._cond:
            self.limit = self.lowest = max(1, min(self.ceiling, slots))
            self.fixed = True
            self._cond.notify_all()

    @contextmanager
    def slot(self):
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def done(self, seconds: float, work: float) -> None:
        """A call answered in ``seconds`` for ``work`` (``work_units``)."""
        with self._cond:
            per_unit = seconds / max(work, 1.0)
            self._latency.append(seconds)
            self._per_unit.append(per_unit)
            if self.fixed:
                return
            per_unit = _gradient(self._per_unit)
            # Queued calls are slow in both measures; a parallel endpoint with a fixed latency
            # makes short replies look slow per unit of work, but not in seconds.
            gradient = max(per_unit, _gradient(self._latency))
            # Slow for several calls in a row, not one: a loaded machine has its moments.
            self._slow = self._slow + 1 if gradient < GRADIENT_LOW else 0
            if self._slow >= max(2, self.limit // 2) and self.limit > 1:
                self._lower(max(1, self.limit // 2))
                return
            self._good += 1 if gradient > GRADIENT_HIGH else 0
            needed = self.limit * 2 ** min(self.lowered, 5)
            grow = self.limit < self.ceiling and self._good >= needed
            if grow and self._fits(self.limit + 1):
                self.limit, self._good = self.limit + 1, 0
                log.info("the LLM endpoint keeps up: %d parallel calls now", self.limit)
                self._cond.notify_all()

    def timed_out(self) -> None:
        """A call timed out: likely queued behind others; serve one at a time until it keeps up."""
        with self._cond:
            if self.limit > 1 and not self.fixed:
                self._lower(1)

    def _lower(self, to: int) -> None:
        log.warning(
            "the LLM endpoint does not keep up with %d parallel calls (a timeout, or calls "
            "queued behind each other): %d from now on",
            self.limit,
            to,
        )
        self.limit, self._good, self._slow = to, 0, 0
        self.lowest = min(self.lowest, to)
        self.lowered += 1

    def _fits(self, limit: int) -> bool:
        """``limit`` calls queued one behind the other would end within half the timeout."""
        return limit * max(self._latency) <= self.timeout / 2

    def as_dict(self) -> dict:
        with self._cond:
            return {
                "concurrency": self.limit,
                "concurrency_ceiling": self.ceiling,
                "concurrency_lowest": self.lowest,
                "concurrency_lowered": self.lowered,
                "concurrency_from_endpoint": self.fixed,
            }


def _gradient(values: deque[float]) -> float:
    """The fastest remembered against the median of the last ``RECENT`` (1: no slower lately)."""
    recent = sorted(list(values)[-RECENT:])
    return min(values) / max(recent[len(recent) // 2], 1e-9)


class TimeoutAnswer(httpx2.BaseTransport):
    """A chat completion whose reply did not come within the timeout comes back as a 504 that the
    openai client does not retry (``x-should-retry: false``): the caller lowers the concurrency
    first and sends it again when a slot frees, instead of the client re-sending it at once into
    the queue it timed out in (a retry storm a serial server computes in full, abandoned or not)."""

    def __init__(self, inner: httpx2.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return self.inner.handle_request(request)
        except httpx2.ReadTimeout:
            if not request.url.path.endswith("/chat/completions"):
                raise
            return httpx2.Response(
                504,
                headers={"x-should-retry": "false", TIMED_OUT: "1"},
                json={"error": {"message": "no reply within the timeout", "type": "timeout"}},
                request=request,
            )

    def close(self) -> None:
        self.inner.close()


def run_bounded(
    fn: Callable, items: Iterable, concurrency: int, on_done: Callable | None = None
) -> list:
    """``fn`` over ``items`` on at most ``concurrency`` threads; results in input order.

    An exception becomes that item's result, so one failure never stops the batch.
    """
    items = list(items)
    results: list = [None] * len(items)

    def one(i):
        try:
            results[i] = fn(items[i])
        except Exception as e:  # noqa: BLE001 - recorded per item, reported by the caller
            results[i] = e
        if on_done:
            on_done(i, results[i])

    with _heap_frozen(), ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(one, range(len(items))))
    return results


_frozen = [0, threading.Lock()]  # runs under way that froze the heap, and its lock


@contextmanager
def _heap_frozen():
    """The objects made before the calls (imports, similarity, the planned prompts: they live
    through the run) left out of the garbage collector's full passes while they run: a full pass
    stops every thread, and one took 74 ms of a bulk run at concurrency 64 (``gc.callbacks``).
    Given back to it when the last run under way ends."""
    with _frozen[1]:
        _frozen[0] += 1
        gc.freeze()
    try:
        yield
    finally:
        with _frozen[1]:
            _frozen[0] -= 1
            if _frozen[0] == 0:
                gc.unfreeze()


def open_connections(clients: list, calls: int) -> threading.Thread:
    """Open the keep-alive connections ``calls`` concurrent calls spread evenly over ``clients``
    use, in the background, while the prompts of a bulk run are planned: opening 64 at once in
    its first round delayed that round's calls by 25-235 ms (``bench/prelabel.py``), and a TLS
    endpoint adds its handshakes. Each is a ``GET /models`` (what ``discover`` asks too; an error
    status opens its connection all the same) held until all are open, so none reuses another's.
    A connection not opened here is opened by its call."""
    per_client = -(-calls // len(clients))
    sent, held = (threading.Barrier(len(clients) * per_client) for _ in range(2))

    def one(client) -> None:
        try:
            sent.wait(timeout=10)
            # The httpx client ``LLMClient`` gave it: ``openai`` has no call that only connects.
            url = f"{client.base_url}models"
            with client._client.stream(
                "GET", url, headers=client.auth_headers, timeout=10
            ) as reply:
                held.wait(timeout=10)  # a reply read is a connection free for another to take
                reply.read()  # read whole: a connection closed mid-reply is not kept
        except Exception as e:  # noqa: BLE001 - a head start only; the calls report real errors
            held.abort()  # the others stop waiting for this one
            log.debug("opening a connection ahead: %r", e)

    def run() -> None:
        started = time.monotonic()
        threads = [
            threading.Thread(target=one, args=(c,), daemon=True)
            for c in clients
            for _ in range(per_client)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.debug("%d connections opened ahead in %.2fs", len(threads), time.monotonic() - started)

    warm = threading.Thread(target=run, daemon=True, name="llm-connections")
    warm.start()
    return warm
