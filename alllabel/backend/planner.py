"""Decisions about the queue and the pre-annotation run, as pure functions (no Label Studio, no I/O).

The queue holds the tasks humans should annotate, in ALLabel order: the budget M first, then a
*reserve* of the next ALLabel picks. The reserve is what keeps Label Studio from serving a
random task at the hand-over: when the M-th annotation lands, the pre-annotations are not in
Label Studio yet, and Uncertainty sampling with no prediction of our model version left falls
back to a random task (measured on LS 1.23.2). With the reserve, the next task served is the
next ALLabel pick; those reserve tasks are pre-annotated first, in place, within seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from alllabel.backend.settings import resolve_budget


def budget_for(setting: int | float, usable_tasks: int) -> int:
    """M: human-annotated tasks wanted (a count, or a fraction of the usable tasks)."""
    return resolve_budget(setting, usable_tasks) if usable_tasks else 0


def picks_needed(
    *, budget: int, annotated: int, available: int, reserve: int, budget_reached: bool, untaken: int
) -> tuple[int, int]:
    """How many more ALLabel picks the queue needs: (for the budget, for the reserve).

    ``available``: unannotated tasks Label Studio can serve in our order (queued, or with a
    pre-annotation). Before the budget is reached humans must still annotate ``budget -
    annotated`` tasks, and a reserve should follow them; afterwards only the reserve is kept, so
    annotators never get a random task while the pre-annotation run goes on. ``untaken``:
    usable tasks that are neither annotated, queued nor pre-annotated (the most we can add).
    The budget's picks are selected first, then the reserve's with them as pre-chosen, so the
    first M tasks are exactly ALLabel's selection for budget M.
    """
    for_budget = 0 if budget_reached else max(0, min(untaken, budget - annotated - available))
    total = max(
        0, min(untaken, reserve + (0 if budget_reached else max(0, budget - annotated)) - available)
    )
    return for_budget, total - for_budget


@dataclass(frozen=True)
class QueueEntry:
    task_id: int
    position: int
    stage: str


def extend_queue(
    task_ids: Sequence[int],
    taken: Iterable[int],
    count: int,
    next_position: int,
    pick: Callable[[list[int], int], list[tuple[int, str]]],
) -> list[QueueEntry]:
    """``count`` new queue entries after ``next_position``.

    ``pick(pre_chosen_indices, count) -> [(index, stage)]`` is the selection (``select`` with
    the already annotated and queued tasks as pre-chosen); indices are into ``task_ids``.
    """
    if count <= 0:
        return []
    index = {t: i for i, t in enumerate(task_ids)}
    pre = sorted(index[t] for t in set(taken) if t in index)
    picked = pick(pre, count)
    return [
        QueueEntry(task_ids[i], next_position + n, stage) for n, (i, stage) in enumerate(picked)
    ]


def run_order(
    todo: Iterable[int],
    queue_positions: dict[int, int],
    confidence_hint: dict[int, float] | None = None,
) -> list[int]:
    """The order tasks are pre-annotated in: queued tasks first (they are what annotators get
    next, by queue position), then the rest, least confident first (``confidence_hint``, e.g.
    demonstration similarity), so review-worthy predictions reach Label Studio early."""
    hint = confidence_hint or {}
    return sorted(
        todo,
        key=lambda t: (t not in queue_positions, queue_positions.get(t, 0), hint.get(t, 0.0), t),
    )


def budget_reached(annotated: int, budget: int | None) -> bool:
    return bool(budget) and annotated >= budget
