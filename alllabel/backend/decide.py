"""Every decision a project controller makes, as one pure function: ``decide(snapshot, settings, now)``.

The controller reads a ``Snapshot`` (state rows, what Label Studio last reported, and its own small
``Memory`` of timers and requests), asks ``decide`` for actions, applies them (Label Studio calls and
state writes in one place) and reads a new snapshot, until ``decide`` returns nothing. ``decide``
answers with the actions of the first *stage* that has work, in the order of the README's diagram:
claims, probe, sync, audit, queue, push, settings, tab, phase, run. ``snapshot.done`` names the
actions already applied in this step, so no stage fires twice in one step (sync: twice at most).

Approval (``ALLABEL_PRELABEL_START=manual``): a run is approved only by a Start Training pressed
*after* its estimate was shown; the approval covers that estimate plus ``APPROVAL_MARGIN`` (tasks and
US$, counted over every run it covers). A run that would go beyond it is held and shows its estimate
again.
"""

from __future__ import annotations

from dataclasses import replace

from alllabel.backend import planner
from alllabel.backend.actions import (
    ApplySettings,
    Approval,
    Approve,
    Audit,
    AuthorizeWebhooks,
    CheckBackends,
    ConfirmClaims,
    CreateQueueTab,
    Detach,
    ExtendQueue,
    LiftHold,
    Memory,
    Probe,
    Push,
    Reattach,
    ReloadConfig,
    RestoreModelVersion,
    ReviewTab,
    SetMessage,
    SetPhase,
    Shown,
    ShowPredictions,
    Snapshot,
    StartRun,
    Sync,
    TopUpSpares,
    Warn,
)

CLAIM_CHECKS = 3  # a claimed annotation Label Studio does not know after this many reads is dropped
MAX_CLAIMS_PER_EVENT = 1000  # a webhook's claims beyond this are ignored (bounds a forged event)
# Seconds after our settings in which Label Studio's connect may still overwrite them.
CONNECT_GRACE = 120.0
BACKEND_CHECK_EVERY = 5  # probes between checks that the project still lists this backend
APPROVAL_MARGIN = 0.10  # an approved estimate may grow this much (tasks, US$) before asking again


# --- small pure rules ----------------------------------------------------------------------------------
def next_backoff(previous: float, floor: float, cap: float) -> float:
    """Doubling backoff after a failure, from ``floor`` up to ``cap`` seconds."""
    return min(cap, max(floor, 2 * previous))


def approval_covers(approval: Approval | None, estimate: dict | None) -> bool:
    """Whether an approval covers a run with this estimate (on top of what it covered already)."""
    if approval is None:
        return False
    if approval.unlimited or not estimate:
        return True
    pairs = (
        (approval.tasks, approval.used_tasks, estimate.get("tasks")),
        (approval.cost_usd, approval.used_cost, estimate.get("cost_usd")),
    )
    for approved, used, new in pairs:
        if (
            approved is not None
            and new is not None
            and used + new > approved * (1 + APPROVAL_MARGIN)
        ):
            return False
    return True


def approval_used(approval: Approval, estimate: dict | None) -> Approval:
    """The approval after a run with this estimate started under it."""
    if not estimate:
        return approval
    return replace(
        approval,
        used_tasks=approval.used_tasks + (estimate.get("tasks") or 0),
        used_cost=approval.used_cost + (estimate.get("cost_usd") or 0.0),
    )


def backend_listed(titles: tuple[str, ...], urls: tuple[str, ...], settings) -> bool:
    """The project lists this backend: by title (ALLABEL_MODEL_VERSION) or by our URL."""
    ours = (getattr(settings, "backend_url", None) or "").rstrip("/")
    return settings.model_version in titles or bool(ours and ours in urls)


def after_run(m: Memory, end, failed: int, now: float, max_backoff: float) -> dict:
    """What a finished run changes in the controller's memory: its hold (a manual one shows its
    estimate, which only a later Start Training approves), the approval it used, the LLM backoff."""
    out: dict = {"plan_now": True}
    if end is not None:
        out.update(hold=end.hold, hold_since=now, approval=end.approval)
        if end.hold is not None and end.hold.kind == "manual":
            est = end.estimate or {}
            out["shown"] = Shown(est.get("tasks"), est.get("cost_usd"), now)
    backoff = next_backoff(m.llm_backoff, 5.0, max_backoff) if failed else 0.0
    out.update(llm_backoff=backoff, llm_retry_at=now + backoff if failed else 0.0)
    return out


def title_warning(title: str, mv: str) -> str:
    return (
        f"the model is connected with title {title!r}, but ALLabel's predictions use model "
        f"version {mv!r} (ALLABEL_MODEL_VERSION): set the project's model version back to "
        f"{mv!r}; rename the model to {mv!r}"
    )


def drift_message(key: str, current, ours) -> str:
    if key == "sampling":
        return (
            f"queue order off: project sampling is {current!r} (ALLabel needs {ours!r}; "
            "press Start Training to restore it)"
        )
    if key == "model_version":
        return (
            f"queue order off: the project shows predictions of model version {current!r}, "
            f"not {ours!r} (press Start Training to restore it)"
        )
    if key == "show_collab_predictions":
        state = "on" if current else "off"
        return (
            f"'Use predictions to prelabel tasks' was switched {state} in the project settings; "
            "left as the user set it"
        )
    return f"project setting {key} is {current!r} (ALLabel set {ours!r})"


def counts_differ(s: Snapshot) -> bool:
    """Label Studio's counts differ from ours (annotation counts only once no claim is pending:
    a claim is Label Studio's count running ahead of our confirmation, not a missed change)."""
    info = s.memory.info or {}
    keys = s.counts if not s.claims else {"task_number": s.counts.get("task_number")}
    return any(info.get(k) is not None and info[k] != s.counts.get(k) for k in keys)


# --- the stages, in order ----------------------------------------------------------------------------
def decide(s: Snapshot, settings, now: float) -> list:
    """The actions the project needs now: those of the first stage with work, in stage order."""
    stages = (_claims, _refill, _push_queue, _probe, _backends, _sync, _audit, _queue, _push_queue)
    stages += (_settings, _phase, _spares)
    for stage in stages if s.memory.detached is None else (_probe, _backends):
        actions = stage(s, settings, now)
        if actions:
            return actions
    return _run(s, settings, now) or _push(s, settings, now, force=False)


def _claims(s: Snapshot, settings, now: float) -> list:
    """Claims first, also between a step's other actions: the reserve is refilled from what is
    confirmed, and the annotator who submitted is already on the next reserve task."""
    if s.phase == "new" and s.applied is None:
        # Connecting: Label Studio serves its previous order until the switch, so the switch
        # comes first (one read per claim, 30 of them cost 10 s on a busy 30,000-task server);
        # the sync reads annotations too, and a task queued meanwhile and annotated is no pick.
        return []
    retries = s.claims > s.fresh_claims and now >= s.memory.claim_retry_at
    if "ConfirmClaims" in s.done:
        retries = False  # failed reads wait for their retry time, once a step
    return [ConfirmClaims(retries=retries)] if s.fresh_claims or retries else []


def _refill(s: Snapshot, settings, now: float) -> list:
    """A confirmed annotation (or a finished run) extends the queue before anything else: the
    reserve is what the annotators get next."""
    if not s.memory.plan_now or s.phase == "new" or not s.usable:
        return []
    return _queue(s, settings, now)


def _probe(s: Snapshot, settings, now: float) -> list:
    m = s.memory
    if "Probe" in s.done or not (m.probe_now or now >= m.next_probe):
        return []
    # Every probe also has the project's webhook signed (secret header, and basic auth when set):
    # no request once it is signed (``webhook_auth``).
    return [Probe(), AuthorizeWebhooks()]


def _backends(s: Snapshot, settings, now: float) -> list:
    """After a probe: is the backend still connected (every few probes)? Label Studio's
    connect-time overwrite of the model version; drift warnings; the webhook's header."""
    m = s.memory
    if "Probe" not in s.done or m.info is None:
        return []
    info, applied, mv = m.info, s.applied or {}, settings.model_version
    overwritten = (
        bool(applied)
        and info.get("model_version") not in (None, mv)
        and s.wall - applied.get("applied_at", 0) < CONNECT_GRACE
    )
    periodic = m.probes % BACKEND_CHECK_EVERY == 0 and not m.force_run
    if (overwritten or periodic or m.detached) and "CheckBackends" not in s.done:
        return [CheckBackends()]
    if m.backend_listed is not None and m.backends_checked_at == m.probes:
        if m.detached is None and not m.backend_listed and not m.force_run:
            why = (
                f"project {s.project} lists this backend no more (Settings -> Model): not worked on"
            )
            return [Detach(why)]
        if m.detached is not None and m.backend_listed:
            return [Reattach()]
    if m.detached is not None:
        return []
    if overwritten and m.backend_titles and info["model_version"] in m.backend_titles:
        if "RestoreModelVersion" not in s.done:
            return [RestoreModelVersion(info["model_version"])]
    if info.get("label_config") and info["label_config"] != s.label_config:
        return [ReloadConfig(info["label_config"])]
    warnings = ((m.title_warning,) if m.title_warning else ()) + tuple(
        drift_message(k, info[k], v) for k, v in applied.items() if k in info and info[k] != v
    )
    if warnings != m.warnings:
        return [Warn(warnings)]
    return []


def _sync(s: Snapshot, settings, now: float) -> list:
    syncs = s.done.count("Sync")
    if s.memory.full_sync and syncs < 2:
        return [Sync(full=True)]
    # A full read after the probe is newer than the probe's counts (annotations arriving while
    # 10,000 tasks are read): reading everything again would only chase them.
    if "Probe" in s.done and counts_differ(s) and syncs < 2 and not s.memory.full_synced:
        return [Sync(full=syncs == 1)]  # the changed tasks first; all of them if still off
    return []


def _audit(s: Snapshot, settings, now: float) -> list:
    if "Audit" in s.done:
        return []
    info = s.memory.info or {}
    held = info.get("total_predictions_number")
    fresh = _after(s.done, "Probe", "Push")  # what LS reported is not older than our pushes
    off = fresh and held is not None and s.pushed and held != s.expected_predictions
    return [Audit()] if s.memory.audit_needed or s.unsure or off else []


def _queue(s: Snapshot, settings, now: float) -> list:
    m = s.memory
    probed = "Probe" in s.done and "ExtendQueue" not in s.done
    if "SetMessage" in s.done or not (m.plan_now or probed):
        return []
    if s.phase == "new" and "ExtendQueue" in s.done:
        return []  # the connect's first selection is in: the switch to it comes first
    if not s.usable:
        text = "no usable tasks yet (import tasks with text)"
        return [SetMessage(text)] if s.message != text else []
    frozen = s.phase in ("prelabeling", "done")
    budget = s.budget if frozen and s.budget else planner.budget_for(settings.budget, len(s.usable))
    reached = _reached(s, budget)
    untaken = sum(1 for t in s.usable if t not in s.annotated and t not in s.predicted)
    for_budget, for_reserve = planner.picks_needed(
        budget=budget,
        annotated=len(s.annotated),
        available=s.available,
        reserve=settings.queue_reserve,
        budget_reached=reached,
        untaken=untaken,
    )
    # At connect Label Studio serves its previous order until ours is in: the reserve (a second
    # selection) is left for after the switch, when it is needed only at the budget.
    later = s.phase == "new" and for_budget > 0 and for_reserve > 0
    return [ExtendQueue(budget, for_budget, 0 if later else for_reserve, reserve_later=later)]


def _reached(s: Snapshot, budget: int | None) -> bool:
    frozen = s.phase in ("prelabeling", "done")
    return frozen or s.memory.force_run or planner.budget_reached(len(s.annotated), budget)


def _push_queue(s: Snapshot, settings, now: float) -> list:
    """Queue entries reach Label Studio before the project is switched to them, and at once.

    At connect (no settings applied yet) only a first stage goes before the switch: the lowest
    ``push_batch`` positions, one request, so Label Studio serves the ALLabel order seconds
    earlier; the rest follows straight after the switch, behind those positions."""
    if _after(s.done, "ExtendQueue", "Push"):
        first = settings.push_batch if s.applied is None else None
        return _push(s, settings, now, force=True, limit=first)
    if _after(s.done, "ApplySettings", "Push") and s.pending:
        return [Push(force=True)]
    return []


def _after(done: tuple[str, ...], a: str, b: str) -> bool:
    """``a`` was applied this step, and after the last ``b``."""
    last = {name: i for i, name in enumerate(done)}
    return a in last and last[a] > last.get(b, -1)


def _push(s: Snapshot, settings, now: float, *, force: bool, limit: int | None = None) -> list:
    if not s.pending or ("Push" in s.done and not force):
        return []
    young = s.wall - (s.oldest_pending or 0) < settings.push_delay
    if not force and s.run_alive and s.pending < settings.push_batch and young:
        return []  # wait for a fuller batch, but never longer than push_delay
    return [Push(force=force, limit=limit if limit is not None and s.pending > limit else None)]


def _settings(s: Snapshot, settings, now: float) -> list:
    if "ExtendQueue" not in s.done and s.phase == "new":
        return []  # the queue goes first
    if (s.applied is None or s.memory.reassert) and "ApplySettings" not in s.done:
        show = s.phase in ("prelabeling", "done") or _reached(s, s.budget)
        return [ApplySettings(show_predictions=show)]
    if s.view_id is None and s.applied is not None and "CreateQueueTab" not in s.done:
        return [CreateQueueTab()]
    return []


def _phase(s: Snapshot, settings, now: float) -> list:
    if s.phase == "new" and "ExtendQueue" in s.done:
        return [SetPhase("planned")]
    if s.phase == "planned" and s.budget and _reached(s, s.budget):
        return [SetPhase("prelabeling"), ShowPredictions(), ReviewTab()]
    return []


def _spares(s: Snapshot, settings, now: float) -> list:
    """The next reserve picks, selected once the queue went out: a confirmed annotation then
    refills the reserve without waiting for a selection."""
    if "TopUpSpares" in s.done or not s.usable or s.phase == "new":
        return []
    untaken = sum(1 for t in s.usable if t not in s.annotated and t not in s.predicted)
    want = min(settings.queue_reserve, untaken)
    return [TopUpSpares(settings.queue_reserve)] if s.spares < want else []


def _run(s: Snapshot, settings, now: float) -> list:
    m = s.memory
    if s.phase not in ("prelabeling", "done") or s.run_alive or "StartRun" in s.done:
        return []
    if not s.prelabels:  # the order was the whole job: the rest is for annotators
        text = "budget reached: nothing in this labeling config is pre-annotated; annotate the rest in the ALLabel order"
        return [SetPhase("done", text)] if s.phase != "done" else []
    if m.hold is not None:
        return _hold(s, settings, now)
    retry_later = s.failed if now < m.llm_retry_at else frozenset()
    startable = [t for t in s.todo if t not in retry_later]
    if startable or m.rerun:
        back = [SetPhase("prelabeling")] if s.phase == "done" else []
        order = planner.run_order(startable, s.queue_positions)
        return back + [StartRun(tuple(order), m.rerun)]
    if not s.todo:
        text = f"pre-annotated {s.prelabeled} task(s) with {s.annotator_name}"
        return [SetPhase("done", text)] if s.phase != "done" else []
    wait = max(0.0, m.llm_retry_at - now)
    text = (
        f"{len(s.todo)} task(s) failed to pre-annotate; retrying in {wait:.0f}s ({s.first_error})"
    )
    stale = s.message is None or not s.message.startswith(f"{len(s.todo)} task(s) failed")
    return [SetMessage(text)] if stale and "SetMessage" not in s.done else []


def _hold(s: Snapshot, settings, now: float) -> list:
    m, h = s.memory, s.memory.hold
    pressed = m.start_training_at
    if h.kind == "manual":
        if m.shown is not None and pressed is not None and pressed > m.shown.at:
            approval = Approval(m.shown.tasks, m.shown.cost_usd, m.shown.at, pressed)
            return [Approve(approval), LiftHold()]
        lifted = False
    elif h.kind == "min_live_f1":  # the user reviewed it and goes on
        if pressed is not None and pressed > m.hold_since:
            return [LiftHold(accept_live=frozenset(h.key or ()))]
        lifted = False
    elif h.kind == "min_f1":  # more (or changed) human annotations: check again
        lifted = s.gold_key is not None and s.gold_key != h.key
    elif h.kind == "cost_cap":
        lifted = settings.max_cost_usd != h.key
    elif h.kind == "batch":
        lifted = now >= m.hold_since + s.batch_poll or (pressed or 0) > m.hold_since
    else:
        lifted = True
    if lifted:
        return [LiftHold()]
    return [SetMessage(h.reason)] if s.message != h.reason and "SetMessage" not in s.done else []
