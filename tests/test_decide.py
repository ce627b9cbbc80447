"""Every decision of the project controller, as a table: snapshot in, actions out (no Label Studio,
no thread, no clock). Each case names the rule it pins down."""

from dataclasses import replace

import pytest

from alllabel.backend import actions as A
from alllabel.backend.bulk import Hold
from alllabel.backend.decide import (
    APPROVAL_MARGIN,
    BACKEND_CHECK_EVERY,
    after_run,
    approval_covers,
    approval_used,
    backend_listed,
    decide,
    next_backoff,
)
from alllabel.backend.runner import Gate, RunEnd
from alllabel.backend.settings import Settings

MV = "alllabel-t"
NOW = 1000.0
WALL = 1_700_000_000.0
S = Settings(model_version=MV, budget=4, queue_reserve=2, push_batch=10, push_delay=2.0)
APPLIED = {
    "sampling": "Uncertainty sampling",
    "model_version": MV,
    "show_collab_predictions": False,
    "applied_at": WALL - 600,
}
COUNTS = {"task_number": 10, "total_annotations_number": 0, "num_tasks_with_annotations": 0}
INFO = {**COUNTS, **{k: v for k, v in APPLIED.items() if k != "applied_at"}, "label_config": "C"}


def mem(**kw) -> A.Memory:
    """A controller that has settled: probed, synced, audited, nothing requested."""
    base = dict(
        probe_now=False,
        full_sync=False,
        audit_needed=False,
        next_probe=NOW + 30,
        info=dict(INFO),
        probes=1,
    )
    return A.Memory(**{**base, **kw})


def snap(memory=None, **kw) -> A.Snapshot:
    """A planned project of 10 usable tasks, budget 4, queue of 6 already in Label Studio."""
    base = dict(
        memory=memory or mem(),
        wall=WALL,
        project=7,
        phase="planned",
        label_config="C",
        budget=4,
        applied=dict(APPLIED),
        view_id=3,
        counts=dict(COUNTS),
        usable=tuple(range(1, 11)),
        predicted=frozenset(range(1, 7)),
        available=6,
        spares=2,
        annotator_name="llm-x",
    )
    return A.Snapshot(**{**base, **kw})


def prelabeling(memory=None, **kw) -> A.Snapshot:
    """Budget reached (tasks 1-4 annotated), tasks 5-10 still to pre-annotate."""
    base = dict(
        phase="prelabeling",
        annotated=frozenset(range(1, 5)),
        todo=tuple(range(5, 11)),
        queue_positions={5: 5, 6: 6},
        available=2,
    )
    return snap(memory, **{**base, **kw})


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


manual = Hold(
    "manual", "waiting for Start Training to pre-annotate (ALLABEL_PRELABEL_START=manual)"
)
SHOWN = A.Shown(6, 0.5, NOW - 10)

CASES = [
    # --- claims ---------------------------------------------------------------------------------
    ("a claim is confirmed first", snap(claims=3, fresh_claims=3), S, ["ConfirmClaims"]),
    (
        "connecting: claims wait until Label Studio serves the ALLabel order",
        snap(phase="new", applied=None, view_id=None, claims=3, fresh_claims=3, done=("Probe",)),
        S,
        ["ExtendQueue"],
    ),
    ("failed reads are retried when due", snap(claims=3), S, ["ConfirmClaims"]),
    (
        "a claim arriving mid-step is confirmed in the same step",
        snap(claims=1, fresh_claims=1, done=("ConfirmClaims", "ExtendQueue")),
        S,
        ["ConfirmClaims"],
    ),
    (
        "a confirmation mid-step extends the queue again, then pushes again",
        snap(mem(plan_now=True), done=("ConfirmClaims", "ExtendQueue", "Push", "ConfirmClaims")),
        S,
        ["ExtendQueue"],
    ),
    (
        "a second extension in a step is pushed at once",
        prelabeling(
            run_alive=True,
            pending=1,
            oldest_pending=WALL,
            done=("ExtendQueue", "Push", "ExtendQueue"),
        ),
        S,
        ["Push"],
    ),
    ("failed reads wait for their retry time", snap(mem(claim_retry_at=NOW + 1), claims=3), S, []),
    (
        "new claims do not wait for old ones' retry",
        snap(mem(claim_retry_at=NOW + 1), claims=3, fresh_claims=1),
        S,
        ["ConfirmClaims"],
    ),
    ("claims once per step", snap(claims=3, done=("ConfirmClaims",)), S, []),
    # --- probe ----------------------------------------------------------------------------------
    ("probe when due", snap(mem(next_probe=NOW - 1)), S, ["Probe", "AuthorizeWebhooks"]),
    ("probe when asked", snap(mem(probe_now=True)), S, ["Probe", "AuthorizeWebhooks"]),
    ("no probe before it is due", snap(), S, []),
    ("probe once per step", snap(mem(probe_now=True), done=("Probe",)), S, ["ExtendQueue"]),
    # --- after a probe: backends, settings seen, webhooks ----------------------------------------
    (
        "every few probes the ML backends are checked",
        snap(mem(probes=BACKEND_CHECK_EVERY), done=("Probe",)),
        S,
        ["CheckBackends"],
    ),
    (
        "a project that lists the backend no more is detached",
        snap(
            mem(probes=5, backend_listed=False, backends_checked_at=5),
            done=("Probe", "CheckBackends"),
        ),
        S,
        ["Detach"],
    ),
    (
        "the CLI's run is never detached",
        snap(
            mem(probes=5, backend_listed=False, backends_checked_at=5, force_run=True),
            done=("Probe", "CheckBackends"),
        ),
        S,
        ["ExtendQueue"],
    ),
    ("a detached project does nothing else", snap(mem(detached="gone"), claims=4), S, []),
    (
        "a detached project checks the backends at each probe",
        snap(mem(detached="gone", probes=2), done=("Probe",)),
        S,
        ["CheckBackends"],
    ),
    (
        "a detached project listed again is reattached",
        snap(
            mem(detached="gone", probes=2, backend_listed=True, backends_checked_at=2),
            done=("Probe", "CheckBackends"),
        ),
        S,
        ["Reattach"],
    ),
    (
        "connect-time model version overwrite: check the titles",
        snap(
            mem(info={**INFO, "model_version": "Renamed"}),
            done=("Probe",),
            applied={**APPLIED, "applied_at": WALL - 5},
        ),
        S,
        ["CheckBackends"],
    ),
    (
        "connect-time overwrite by the model's title is set back",
        snap(
            mem(
                info={**INFO, "model_version": "Renamed"},
                backend_titles=("Renamed",),
                backend_listed=True,
                backends_checked_at=1,
            ),
            done=("Probe", "CheckBackends"),
            applied={**APPLIED, "applied_at": WALL - 5},
        ),
        S,
        ["RestoreModelVersion"],
    ),
    (
        "a user's model version change later is only reported",
        snap(mem(info={**INFO, "model_version": "Renamed"}), done=("Probe",)),
        S,
        ["Warn"],
    ),
    (
        "a sampling change is reported, never set back",
        snap(mem(info={**INFO, "sampling": "Sequential sampling"}), done=("Probe",)),
        S,
        ["Warn"],
    ),
    (
        "a drift already reported is not reported again",
        snap(
            mem(
                info={**INFO, "sampling": "Sequential sampling"},
                warnings=(
                    "queue order off: project sampling is 'Sequential sampling' (ALLabel needs "
                    "'Uncertainty sampling'; press Start Training to restore it)",
                ),
            ),
            done=("Probe",),
        ),
        S,
        ["ExtendQueue"],
    ),
    (
        "a new labeling config is reloaded",
        snap(mem(info={**INFO, "label_config": "D"}), done=("Probe",)),
        S,
        ["ReloadConfig"],
    ),
    (
        "every probe has the webhook signed (its secret header), with basic auth too",
        snap(mem(next_probe=NOW - 1)),
        replace(S, basic_auth_user="u"),
        ["Probe", "AuthorizeWebhooks"],
    ),
    # --- sync -----------------------------------------------------------------------------------
    ("a full sync when asked", snap(mem(full_sync=True)), S, ["Sync"]),
    (
        "counts that differ: the changed tasks",
        snap(mem(info={**INFO, "task_number": 12}), done=("Probe",)),
        S,
        ["Sync"],
    ),
    (
        "counts still off after that: all tasks",
        snap(mem(info={**INFO, "task_number": 12}), done=("Probe", "Sync")),
        S,
        ["Sync"],
    ),
    (
        "counts off after a full read that followed the probe: the probe is older, no re-read",
        snap(mem(info={**INFO, "task_number": 12}, full_synced=True), done=("Probe", "Sync")),
        S,
        ["ExtendQueue"],
    ),
    (
        "never more than two syncs a step",
        snap(mem(info={**INFO, "task_number": 12}), done=("Probe", "Sync", "Sync")),
        S,
        ["ExtendQueue"],
    ),
    (
        "counts differing without a probe this step do not sync",
        snap(mem(info={**INFO, "task_number": 12})),
        S,
        [],
    ),
    # --- audit ----------------------------------------------------------------------------------
    ("an audit when asked", snap(mem(audit_needed=True)), S, ["Audit"]),
    ("an audit after unsure pushes", snap(unsure=2), S, ["Audit"]),
    (
        "an audit when Label Studio holds another number of predictions",
        snap(
            mem(info={**INFO, "total_predictions_number": 9}),
            done=("Probe",),
            pushed=6,
            expected_predictions=6,
        ),
        S,
        ["Audit"],
    ),
    # --- queue ----------------------------------------------------------------------------------
    (
        "no audit from counts older than our pushes",
        snap(
            mem(info={**INFO, "total_predictions_number": 9}),
            done=("Probe", "ExtendQueue", "Push"),
            pushed=6,
            expected_predictions=6,
        ),
        S,
        [],
    ),
    (
        "a confirmed annotation refills before the probe that is due",
        prelabeling(mem(plan_now=True, next_probe=NOW - 1), done=("ConfirmClaims",)),
        S,
        ["ExtendQueue"],
    ),
    ("no usable task: say so", snap(usable=(), done=("Probe",)), S, ["SetMessage"]),
    (
        "a new project: the budget and the reserve are picked",
        snap(
            phase="new",
            applied=None,
            view_id=None,
            budget=None,
            predicted=frozenset(),
            available=0,
            done=("Probe",),
        ),
        S,
        ["ExtendQueue"],
    ),
    (
        "a confirmed annotation refills the reserve",
        snap(mem(plan_now=True), annotated=frozenset({1}), available=5),
        S,
        ["ExtendQueue"],
    ),
    # --- push, settings, tabs, phases -----------------------------------------------------------
    (
        "queue entries are pushed at once",
        snap(pending=3, oldest_pending=WALL, done=("ExtendQueue",)),
        S,
        ["Push"],
    ),
    (
        "a new project: queue pushed, then settings",
        snap(phase="new", applied=None, view_id=None, done=("Probe", "ExtendQueue", "Push")),
        S,
        ["ApplySettings"],
    ),
    (
        "a new project: no settings before its queue",
        snap(phase="new", applied=None, view_id=None),
        S,
        [],
    ),
    ("the queue tab once", snap(view_id=None, done=("ExtendQueue",)), S, ["CreateQueueTab"]),
    (
        "new -> planned after the queue",
        snap(phase="new", done=("ExtendQueue", "Push", "ApplySettings")),
        S,
        ["SetPhase"],
    ),
    (
        "Start Training restores the settings",
        snap(mem(reassert=True), done=("ExtendQueue",)),
        S,
        ["ApplySettings"],
    ),
    (
        "planned -> prelabeling at the budget, predictions shown, review tab",
        snap(annotated=frozenset(range(1, 5))),
        S,
        ["SetPhase", "ShowPredictions", "ReviewTab"],
    ),
    ("below the budget nothing runs", snap(annotated=frozenset({1, 2, 3})), S, []),
    ("spares are selected ahead once the queue is out", snap(spares=1), S, ["TopUpSpares"]),
    ("no spares while the queue is being planned", snap(phase="new", spares=0), S, []),
    ("no spares beyond the tasks left", snap(spares=0, predicted=frozenset(range(1, 11))), S, []),
    # --- the run --------------------------------------------------------------------------------
    ("the budget reached: the run starts", prelabeling(), S, ["StartRun"]),
    ("a run going: nothing more", prelabeling(run_alive=True), S, []),
    ("nothing to pre-annotate: done, no run", prelabeling(prelabels=False), S, ["SetPhase"]),
    ("nothing to pre-annotate, done: stays", prelabeling(phase="done", prelabels=False), S, []),
    (
        "during a run pushes wait for a batch",
        prelabeling(run_alive=True, pending=3, oldest_pending=WALL - 0.5),
        S,
        [],
    ),
    (
        "but never beyond push_delay",
        prelabeling(run_alive=True, pending=3, oldest_pending=WALL - 5),
        S,
        ["Push"],
    ),
    (
        "a full batch goes",
        prelabeling(run_alive=True, pending=10, oldest_pending=WALL),
        S,
        ["Push"],
    ),
    ("nothing left: done", prelabeling(todo=(), prelabeled=6), S, ["SetPhase"]),
    (
        "new tasks after done: back to prelabeling",
        prelabeling(phase="done", todo=(11,)),
        S,
        ["SetPhase", "StartRun"],
    ),
    (
        "failures wait for their backoff",
        prelabeling(mem(llm_retry_at=NOW + 5), todo=(5,), failed=frozenset({5}), first_error="503"),
        S,
        ["SetMessage"],
    ),
    (
        "after the backoff they are retried",
        prelabeling(mem(llm_retry_at=NOW - 1), todo=(5,), failed=frozenset({5})),
        S,
        ["StartRun"],
    ),
    ("Start Training redoes what is stale", prelabeling(mem(rerun=True), todo=()), S, ["StartRun"]),
    # --- holds and approval ---------------------------------------------------------------------
    ("a manual hold waits", prelabeling(mem(hold=manual, shown=SHOWN)), S, ["SetMessage"]),
    (
        "Start Training during the budget approves nothing",
        prelabeling(mem(hold=manual, shown=SHOWN, start_training_at=NOW - 100)),
        S,
        ["SetMessage"],
    ),
    (
        "Start Training after the estimate approves it",
        prelabeling(mem(hold=manual, shown=SHOWN, start_training_at=NOW - 1)),
        S,
        ["Approve", "LiftHold"],
    ),
    (
        "a Start Training with no estimate shown approves nothing",
        prelabeling(mem(hold=manual, start_training_at=NOW - 1)),
        S,
        ["SetMessage"],
    ),
    (
        "min F1 hold: same annotations, still held",
        prelabeling(mem(hold=Hold("min_f1", "low", key="k1")), gold_key="k1"),
        S,
        ["SetMessage"],
    ),
    (
        "min F1 hold: new annotations lift it",
        prelabeling(mem(hold=Hold("min_f1", "low", key="k1")), gold_key="k2"),
        S,
        ["LiftHold"],
    ),
    (
        "live F1 hold: waits for Start Training",
        prelabeling(mem(hold=Hold("min_live_f1", "low", key=frozenset({"v"})), hold_since=NOW - 5)),
        S,
        ["SetMessage"],
    ),
    (
        "live F1 hold: Start Training after it lets that version go on",
        prelabeling(
            mem(
                hold=Hold("min_live_f1", "low", key=frozenset({"v"})),
                hold_since=NOW - 5,
                start_training_at=NOW - 1,
            )
        ),
        S,
        ["LiftHold"],
    ),
    (
        "cost cap hold: same cap, held",
        prelabeling(mem(hold=Hold("cost_cap", "cap", key=None))),
        S,
        ["SetMessage"],
    ),
    (
        "cost cap hold: a new cap lifts it",
        prelabeling(mem(hold=Hold("cost_cap", "cap", key=1.0))),
        S,
        ["LiftHold"],
    ),
    (
        "batch hold: polled again later",
        prelabeling(mem(hold=Hold("batch", "b"), hold_since=NOW - 31)),
        S,
        ["LiftHold"],
    ),
    (
        "batch hold: not yet",
        prelabeling(mem(hold=Hold("batch", "b"), hold_since=NOW - 1)),
        S,
        ["SetMessage"],
    ),
    (
        "a hold message already shown is not written again",
        prelabeling(mem(hold=manual), message=manual.reason),
        S,
        [],
    ),
]


@pytest.mark.parametrize("name,snapshot,settings,expected", CASES, ids=[c[0] for c in CASES])
def test_decide(name, snapshot, settings, expected):
    assert kinds(decide(snapshot, settings, NOW)) == expected


def test_a_connect_pushes_a_first_stage_then_switches_then_the_rest():
    """Label Studio serves its previous order until ours is in: at connect only the budget's picks
    are selected, only the lowest push_batch positions go before the switch, the rest straight
    after it, and the reserve's selection once the project is planned."""
    new = dict(phase="new", applied=None, view_id=None, budget=None, available=0)
    assert decide(snap(**new, predicted=frozenset(), done=("Probe",)), S, NOW) == [
        A.ExtendQueue(4, 4, 0, reserve_later=True)
    ]
    queued = dict(new, predicted=frozenset(range(1, 5)), available=4, pending=40)
    s = snap(mem(plan_now=True), **queued, oldest_pending=WALL, done=("Probe", "ExtendQueue"))
    assert decide(s, S, NOW) == [A.Push(force=True, limit=S.push_batch)]
    s = replace(s, done=(*s.done, "Push"), pending=30)  # nothing selected before the switch
    assert kinds(decide(s, S, NOW)) == ["ApplySettings"]
    s = replace(s, done=(*s.done, "ApplySettings"))
    assert decide(s, S, NOW) == [A.Push(force=True)]  # the rest, at once
    done = ("Probe", "ExtendQueue", "Push", "ApplySettings", "Push", "CreateQueueTab", "SetPhase")
    planned = snap(mem(plan_now=True), predicted=frozenset(range(1, 5)), available=4, done=done)
    assert decide(planned, S, NOW) == [A.ExtendQueue(4, 0, 2)]


def test_a_small_first_queue_goes_in_one_push_and_a_planned_project_selects_its_reserve_at_once():
    s = snap(phase="new", applied=None, view_id=None, pending=5, done=("Probe", "ExtendQueue"))
    assert decide(s, S, NOW) == [A.Push(force=True)]
    assert decide(snap(mem(plan_now=True), available=3, done=("Probe",)), S, NOW) == [
        A.ExtendQueue(4, 1, 2)
    ]


def test_start_training_accepts_the_versions_a_live_hold_named():
    held = mem(hold=Hold("min_live_f1", "low", key=frozenset({"v"})), hold_since=NOW - 5)
    out = decide(prelabeling(replace(held, start_training_at=NOW - 1)), S, NOW)
    assert out == [A.LiftHold(accept_live=frozenset({"v"}))]


def test_forged_claims_change_no_queue_entry():
    """Claims alone never extend the queue: only confirmed annotations (plan_now) do."""
    s = snap(claims=40, fresh_claims=40, annotated=frozenset())
    assert kinds(decide(s, S, NOW)) == ["ConfirmClaims"]
    after = snap(claims=40, done=("ConfirmClaims",))  # nothing was confirmed: no plan_now
    assert kinds(decide(after, S, NOW)) == []


def test_the_run_order_is_the_queue_first():
    (run,) = decide(prelabeling(queue_positions={9: 1, 6: 2}), S, NOW)
    assert run.order[:2] == (9, 6) and set(run.order) == set(range(5, 11))


def test_the_budget_is_frozen_once_reached_and_picks_follow_the_planner():
    (ext,) = decide(snap(mem(plan_now=True), available=0, predicted=frozenset()), S, NOW)
    assert (ext.budget, ext.for_budget, ext.for_reserve) == (4, 4, 2)
    (ext,) = decide(prelabeling(mem(plan_now=True), budget=4, available=0), S, NOW)
    assert (ext.budget, ext.for_budget, ext.for_reserve) == (4, 0, 2)


def test_approval_covers_its_estimate_plus_the_margin():
    a = A.Approval(tasks=100, cost_usd=1.0, shown_at=0, approved_at=1)
    assert approval_covers(a, {"tasks": 100, "cost_usd": 1.0})
    assert approval_covers(a, {"tasks": int(100 * (1 + APPROVAL_MARGIN)), "cost_usd": 1.0})
    assert not approval_covers(a, {"tasks": 111, "cost_usd": 1.0})
    assert not approval_covers(a, {"tasks": 100, "cost_usd": 1.2})
    assert not approval_covers(None, {"tasks": 1})
    used = approval_used(a, {"tasks": 60, "cost_usd": 0.6})
    assert not approval_covers(used, {"tasks": 60, "cost_usd": 0.6})  # counted over its runs
    assert approval_covers(A.Approval(None, None, 0, 0, unlimited=True), {"tasks": 10**6})


def test_the_gate_judges_the_estimate_the_run_reported():
    a = A.Approval(tasks=10, cost_usd=0.1, shown_at=0, approved_at=1)
    estimate = {"tasks": 10, "cost_usd": 0.1}
    gate = Gate(a, lambda: estimate)
    assert gate() and gate.used.used_tasks == 10  # asked at the holds step, after the estimate
    estimate = {"tasks": 20, "cost_usd": 0.1}
    assert not Gate(a, lambda: estimate)()
    assert not Gate(None, lambda: None)()


def test_a_manual_hold_records_the_estimate_it_shows():
    end = RunEnd(hold=manual, estimate={"tasks": 6, "cost_usd": 0.5})
    out = after_run(mem(), end, 0, NOW, 600)
    assert out["shown"] == A.Shown(6, 0.5, NOW) and out["hold"] is manual and out["plan_now"]
    failed = after_run(mem(llm_backoff=5.0), None, 2, NOW, 600)
    assert failed["llm_backoff"] == 10.0 and failed["llm_retry_at"] == NOW + 10.0


def test_backoff_doubles_up_to_its_cap():
    assert [next_backoff(b, 1.0, 30) for b in (0, 1, 8, 20)] == [1.0, 2, 16, 30]


def test_the_backend_is_listed_by_title_or_url():
    assert backend_listed((MV,), ("http://x",), S)
    assert not backend_listed(("other",), ("http://x",), S)
    assert backend_listed(("other",), ("http://x:9",), replace(S, backend_url="http://x:9/"))
