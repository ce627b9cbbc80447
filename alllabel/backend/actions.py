"""What a project controller sees and does: the snapshot it decides on, its memory, and the actions
``decide.py`` answers with (each applied by ``controller.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alllabel.backend.bulk import Hold

CLAIM_BATCH = 200  # claims confirmed per step (one GET each)


# --- what the controller remembers between steps ---------------------------------------------------
@dataclass
class Approval:
    """A Start Training that approved the estimate shown before it (``None`` fields: not priced)."""

    tasks: int | None
    cost_usd: float | None
    shown_at: float
    approved_at: float
    used_tasks: int = 0
    used_cost: float = 0.0
    unlimited: bool = False  # the CLI's prelabel --project


@dataclass
class Shown:
    """The estimate a held run showed, and when (monotonic)."""

    tasks: int | None
    cost_usd: float | None
    at: float


@dataclass
class Memory:
    probe_now: bool = True
    plan_now: bool = False
    full_sync: bool = True
    audit_needed: bool = True
    reassert: bool = False  # Start Training: restore the settings
    rerun: bool = False  # redo stale pre-annotations at the next run
    force_run: bool = False  # pre-annotate whatever the budget (CLI)
    next_probe: float = 0.0
    claim_retry_at: float = 0.0
    llm_retry_at: float = 0.0
    llm_backoff: float = 0.0
    probes: int = 0
    info: dict | None = None  # the last probe's project as Label Studio reported it
    full_synced: bool = False  # every task was read after that probe: its counts are older
    backend_titles: tuple[str, ...] | None = None  # listed ML backends, at the last check
    backend_listed: bool | None = None  # by title or URL, at that check
    backends_checked_at: int = -1  # the probe count of that check
    detached: str | None = None  # the project lists this backend no more
    webhooks_authorized: bool = False
    title_warning: str | None = None
    warnings: tuple[str, ...] = ()
    hold: Hold | None = None
    hold_since: float = 0.0
    live_accepted: frozenset = frozenset()  # versions let go on below ALLABEL_MIN_LIVE_F1
    start_training_at: float | None = None
    shown: Shown | None = None
    approval: Approval | None = None


@dataclass(frozen=True)
class Snapshot:
    memory: Memory
    wall: float  # time.time(), for the settings' timestamp
    project: int = 0
    phase: str = "new"
    label_config: str = ""
    message: str | None = None
    budget: int | None = None
    applied: dict | None = None
    view_id: int | None = None
    claims: int = 0
    fresh_claims: int = 0  # of those, never read yet
    counts: dict = field(default_factory=dict)  # ours, with Label Studio's keys
    expected_predictions: int = 0
    pushed: int = 0
    usable: tuple[int, ...] = ()
    annotated: frozenset[int] = frozenset()  # usable tasks a human annotated
    predicted: frozenset[int] = frozenset()
    available: int = 0
    spares: int = 0  # next reserve picks selected ahead (refills need no selection)
    pending: int = 0
    oldest_pending: float | None = None
    unsure: int = 0
    run_alive: bool = False
    todo: tuple[int, ...] = ()  # unannotated usable tasks without a pre-annotation
    failed: frozenset[int] = frozenset()  # of those, failed before
    first_error: str | None = None
    prelabeled: int = 0
    queue_positions: dict = field(default_factory=dict)
    gold_key: str | None = None
    batch_poll: float = 30.0
    annotator_name: str = "?"
    prelabels: bool = True  # the config has a group we pre-annotate (else all is left to humans)
    done: tuple[str, ...] = ()


# --- actions -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfirmClaims:
    retries: bool = True  # also claims that failed a read before (their retry time has come)
    limit: int = CLAIM_BATCH


@dataclass(frozen=True)
class Probe:
    pass


@dataclass(frozen=True)
class CheckBackends:
    pass


@dataclass(frozen=True)
class Detach:
    reason: str


@dataclass(frozen=True)
class Reattach:
    pass


@dataclass(frozen=True)
class ReloadConfig:
    label_config: str


@dataclass(frozen=True)
class AuthorizeWebhooks:
    pass


@dataclass(frozen=True)
class RestoreModelVersion:
    title: str


@dataclass(frozen=True)
class Warn:
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Sync:
    full: bool


@dataclass(frozen=True)
class Audit:
    pass


@dataclass(frozen=True)
class SetMessage:
    text: str | None


@dataclass(frozen=True)
class ExtendQueue:
    budget: int
    for_budget: int
    for_reserve: int
    reserve_later: bool = False  # at connect: the reserve is selected once the order is in


@dataclass(frozen=True)
class TopUpSpares:
    want: int


@dataclass(frozen=True)
class Push:
    force: bool
    limit: int | None = None  # only the lowest queue positions (the first stage at connect)


@dataclass(frozen=True)
class ApplySettings:
    show_predictions: bool


@dataclass(frozen=True)
class CreateQueueTab:
    pass


@dataclass(frozen=True)
class SetPhase:
    phase: str
    message: str | None = None


@dataclass(frozen=True)
class ShowPredictions:
    pass


@dataclass(frozen=True)
class ReviewTab:
    pass


@dataclass(frozen=True)
class Approve:
    approval: Approval


@dataclass(frozen=True)
class LiftHold:
    accept_live: frozenset = frozenset()  # Start Training lets these versions go on


@dataclass(frozen=True)
class StartRun:
    order: tuple[int, ...]
    rerun: bool
