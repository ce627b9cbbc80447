"""The queue and run decisions, without Label Studio."""

from alllabel import BM25Similarity, select
from alllabel.backend.planner import (
    budget_for,
    budget_reached,
    extend_queue,
    picks_needed,
    run_order,
)
from tests.data import mof_texts


def test_fresh_project_gets_the_budget_then_a_reserve():
    assert picks_needed(
        budget=20, annotated=0, available=0, reserve=5, budget_reached=False, untaken=300
    ) == (20, 5)
    # Annotations made before the queue existed are demonstrations too: fewer picks are needed.
    assert picks_needed(
        budget=20, annotated=3, available=0, reserve=5, budget_reached=False, untaken=297
    ) == (17, 5)
    # A queue that already covers the budget and the reserve needs nothing.
    assert picks_needed(
        budget=20, annotated=10, available=15, reserve=5, budget_reached=False, untaken=275
    ) == (0, 0)
    # The budget grew (new tasks): the queued reserve, the next ALLabel picks, now counts toward
    # the budget, and four new picks restore the reserve behind it.
    assert picks_needed(
        budget=24, annotated=10, available=15, reserve=5, budget_reached=False, untaken=275
    ) == (0, 4)


def test_after_the_budget_only_the_reserve_is_kept():
    # Pre-annotations (available) already cover the reserve: nothing to add.
    assert picks_needed(
        budget=20, annotated=22, available=40, reserve=5, budget_reached=True, untaken=238
    ) == (0, 0)
    # Annotators outpace the LLM run: the next ALLabel picks keep them off random tasks.
    assert picks_needed(
        budget=20, annotated=24, available=2, reserve=5, budget_reached=True, untaken=274
    ) == (0, 3)
    # Never more than there are tasks left.
    assert picks_needed(
        budget=20, annotated=24, available=2, reserve=5, budget_reached=True, untaken=1
    ) == (0, 1)
    assert picks_needed(
        budget=20, annotated=0, available=0, reserve=0, budget_reached=False, untaken=5
    ) == (5, 0)
    assert picks_needed(
        budget=20, annotated=0, available=0, reserve=5, budget_reached=False, untaken=22
    ) == (20, 2)


def test_budget():
    assert budget_for(0.05, 300) == 15 and budget_for(50, 10) == 10 and budget_for(0.05, 0) == 0
    assert budget_reached(15, 15) and not budget_reached(14, 15) and not budget_reached(3, 0)


def test_extend_queue_continues_positions_and_plans_around_what_is_taken():
    seen = {}

    def pick(pre, n):
        seen["pre"], seen["n"] = pre, n
        return [(4, "diversity"), (1, "similarity")][:n]

    entries = extend_queue(
        [10, 11, 12, 13, 14], taken={12, 10, 99}, count=2, next_position=7, pick=pick
    )
    assert seen == {"pre": [0, 2], "n": 2}  # indices into the task list; unknown ids ignored
    assert [(e.task_id, e.position, e.stage) for e in entries] == [
        (14, 7, "diversity"),
        (11, 8, "similarity"),
    ]
    assert extend_queue([1], set(), 0, 0, pick) == []


def test_the_queue_with_its_reserve_is_the_allabel_order():
    """Budget picks first, then the reserve: the next ALLabel picks with the budget as pre-chosen."""
    texts = mof_texts(120)
    ids = list(range(1000, 1120))
    sim = BM25Similarity(texts)

    def pick(pre, n):
        sel = select(sim, n, pre_chosen=pre)
        return list(zip(sel.indices, sel.stages))

    budget = extend_queue(ids, set(), 10, 0, pick)
    reserve = extend_queue(ids, {e.task_id for e in budget}, 5, 10, pick)
    assert [e.task_id - 1000 for e in budget] == select(sim, 10).indices
    assert [e.task_id - 1000 for e in reserve] == select(
        sim, 5, pre_chosen=select(sim, 10).indices
    ).indices
    assert len({e.task_id for e in budget + reserve}) == 15


def test_run_order_serves_the_queue_first_then_the_least_confident():
    order = run_order(
        [5, 1, 9, 7, 3], queue_positions={9: 1, 7: 0}, confidence_hint={5: 0.9, 1: 0.2, 3: 0.5}
    )
    assert order == [7, 9, 1, 3, 5]
