"""A cost cap for a bulk run: tasks start only while their worst case still fits under it.

What counts against the cap ``max_usd``:

* ``spent_usd``: what the caller already paid toward the same cap in earlier runs for tasks that
  are not part of this one (the backend keeps this total);
* every answer this run uses, at the price it was bought: a cached answer counts at its original
  cost (it is not paid again), so re-running with the same cap buys nothing new, and raising the
  cap buys exactly the difference;
* while a task is in flight, its worst case: its counted prompt tokens plus ``max_tokens`` of reply
  for each of its prompts, at the batch price for Batch API runs. When it ends, the worst case is
  replaced by what the endpoint billed for it (``alllabel.llm.billing``: failed, truncated and
  unparseable replies and retries included; an attempt that reported nothing at its worst case).

Admission happens in task order: the first task whose worst case does not fit stops the run, and
it and every later task are *held* (not failed) - reported, and done by a later run with a higher
cap. So the cap is never exceeded as long as the endpoint counts no more prompt tokens than we do
(see ``alllabel.llm.tokens`` for the margin).
"""

from __future__ import annotations

import threading


class SpendGuard:
    def __init__(self, max_usd: float | None, spent_usd: float = 0.0):
        if max_usd is not None and max_usd < 0:
            raise ValueError(f"the cost cap must be >= 0 US$, got {max_usd}")
        self.max_usd = max_usd
        self.committed = float(spent_usd)  # settled costs (earlier runs + finished tasks)
        self.reserved: dict[int, float] = {}  # task -> worst case while in flight
        self.stopped_at: int | None = None  # the first held task (in admission order)
        self.failed_usd = 0.0  # of ``committed``: what failed tasks were billed in this run
        self.truncated = 0  # failed tasks whose reply was cut at max_tokens
        self.succeeded = 0
        self._turn = 0
        self._cond = threading.Condition()

    @property
    def total(self) -> float:
        """Settled plus in-flight worst cases, US$."""
        return self.committed + sum(self.reserved.values())

    def admit(self, ticket: int, task: int, worst_usd: float) -> bool:
        """Admit ``task`` (the ``ticket``-th, counting from 0) if its worst case fits; in ticket order."""
        with self._cond:
            self._cond.wait_for(lambda: self._turn == ticket)
            try:
                if self.max_usd is None:
                    ok = True
                else:
                    ok = self.stopped_at is None and self.total + worst_usd <= self.max_usd + 1e-12
                    if not ok and self.stopped_at is None:
                        self.stopped_at = task
                if ok:
                    self.reserved[task] = worst_usd
                return ok
            finally:
                self._turn += 1
                self._cond.notify_all()

    def settle(
        self, task: int, usd: float | None, *, failed: bool = False, truncated: bool = False
    ) -> None:
        """Replace the task's worst case by what it cost (``None``: keep the worst case). A failed
        task's cost is also counted as spent on failures (``failed_usd``), for the hold's cause."""
        with self._cond:
            worst = self.reserved.pop(task, 0.0)
            cost = worst if usd is None else usd
            self.committed += cost
            if failed:
                self.failed_usd += cost
                self.truncated += truncated
            else:
                self.succeeded += 1

    def failed_after(self, usd: float, refund: float = 0.0, truncated: bool = False) -> None:
        """A task settled as a success failed after all (its reply could not be read): its bill
        ``usd`` counts as spent on failures, and ``refund`` (cached answers counted at the price
        they were bought) no longer counts, as if it had been settled as failed."""
        with self._cond:
            self.committed -= refund
            self.failed_usd += usd
            self.truncated += truncated
            self.succeeded -= 1
