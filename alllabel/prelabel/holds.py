"""Why work waits: structured holds (a kind, the numbers, a message), never prose to parse.

Kinds: ``cost_cap`` (the cap would be exceeded), ``batch`` (answers pending in a Batch API batch),
``stopped`` (the process is shutting down), ``min_f1`` (the quality check is below the minimum),
``manual`` (waiting for Start Training), ``min_live_f1`` (human corrections score a version's
pre-annotations below ALLABEL_MIN_LIVE_F1). ``key`` is the value that must change for the hold to
lift (the backend's controller compares it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Hold:
    kind: str
    message: str
    tasks: int = 0  # tasks held
    cap_usd: float | None = None
    counted_usd: float | None = None  # counted against the cap when it stopped
    batch_ids: tuple[str, ...] = ()
    cause: str | None = None  # what the spend went to, when failed calls used the cap up
    f1: float | None = None
    min_f1: float | None = None
    key: object = field(default=None, compare=False)

    @property
    def reason(self) -> str:
        """The message (the name the backend's controller reads)."""
        return self.message


def stopped() -> Hold:
    return Hold("stopped", "stopped: the process is shutting down; the next run does it")


def waiting_for_batch(batch_ids: list[str], tasks: int = 1) -> Hold:
    ids = ", ".join(sorted(set(batch_ids)))
    return Hold(
        "batch",
        f"{tasks} task(s) waiting for the Batch API (batch {ids}); run again to collect it",
        tasks=tasks,
        batch_ids=tuple(sorted(set(batch_ids))),
    )


RAISE_THE_CAP = "; raise the cap (ALLABEL_MAX_COST_USD, --max-cost) and run again to continue"


def _cause_fix(cause: str) -> str:
    return f"; the spend went to failed calls: {cause} - fix that before raising the cap"


def with_cause(hold: Hold, cause: str) -> Hold:
    """A cap hold that names what an earlier run's failed calls spent the cap on."""
    if hold.kind != "cost_cap" or hold.cause or RAISE_THE_CAP not in hold.message:
        return hold
    return replace(
        hold, message=hold.message.replace(RAISE_THE_CAP, _cause_fix(cause)), cause=cause
    )


def cost_cap(
    cap_usd: float, counted_usd: float, tasks: int = 1, *, cause: str | None = None
) -> Hold:
    """The cap would be exceeded. ``cause``: the failure the spend went to (e.g. replies cut at
    ALLABEL_LLM_MAX_TOKENS): raising the cap alone would buy more of the same."""
    head = (
        f"held: the cost cap of US${cap_usd:.2f} would be exceeded (US${counted_usd:.4f} counted "
        f"so far); {tasks} task(s) not pre-annotated"
    )
    fix = _cause_fix(cause) if cause else RAISE_THE_CAP
    return Hold(
        "cost_cap", head + fix, tasks=tasks, cap_usd=cap_usd, counted_usd=counted_usd, cause=cause
    )


def live_f1(version: str, f1: float, min_f1: float, reviewed: int, key: object) -> Hold:
    """Annotators' corrections score ``version`` below the minimum: the rest of the run waits."""
    return Hold(
        "min_live_f1",
        f"held: human corrections of {reviewed} pre-annotated task(s) score {version} at span F1 "
        f"{f1:.3f}, below the minimum {min_f1:.3f} (ALLABEL_MIN_LIVE_F1); review the corrections, "
        "improve the prompt or model (or lower the minimum), then press Start Training",
        f1=f1,
        min_f1=min_f1,
        key=key,
    )


def with_tasks(hold: Hold, tasks: int) -> Hold:
    """The same hold, for ``tasks`` tasks (a run's summary of its held tasks)."""
    if hold.kind == "cost_cap":
        return cost_cap(hold.cap_usd, hold.counted_usd, tasks, cause=hold.cause)
    if hold.kind == "batch":
        return waiting_for_batch(list(hold.batch_ids), tasks)
    return hold
