"""What /status reports of a project, and the warnings shown there and in the log."""

from __future__ import annotations

import time
from datetime import datetime

from alllabel.backend.label_config import config_warning, parse_label_config
from alllabel.backend.live import live_accuracy
from alllabel.backend.state import State

LAST_ERRORS = 5  # errors shown in /status and on the page


def project_status(state: State, pid: int, controller=None) -> dict:
    """A project's progress as /status reports it (the controller adds what only it knows)."""
    p = state.project(pid)
    queue = state.queue(pid)
    annotated = state.annotated_tasks(pid)
    preds = state.predictions(pid)
    queue_ids = {q.task_id for q in queue}
    order = order_status(p, annotated, queue_ids, state.first_annotated(pid))
    c = controller
    out = {
        "project": pid,
        "phase": p["phase"],
        "message": (c.error if c and c.error else None) or p["message"],
        "total_tasks": p["total_tasks"],
        "budget": p["budget"],
        "annotated_tasks": len(annotated),
        "annotated_from_queue": order.pop("picks"),
        "order": order,
        "unconfirmed_claims": len(state.claims(pid)),
        "queue": {
            "selected": len(queue),
            "pushed": sum(q.pushed is not None for q in queue),
            "reserve": c.settings.queue_reserve if c else None,
        },
        "prelabels": {
            "done": sum(x.result is not None for x in preds.values()),
            "failed": sum(x.result is None and x.error is not None for x in preds.values()),
            "pushed": sum(x.result is not None and x.pushed == x.want for x in preds.values()),
        },
        "skipped_tasks": len(state.skipped(pid)),
        "detached": c.memory.detached if c else None,
        "warnings": config_warnings(p["label_config"]) + (list(c.memory.warnings) if c else []),
        "live_accuracy": live_accuracy(state.reviewed(pid)),
        "errors": last_errors(preds.values(), c.errors if c else []),
    }
    if p["phase"] in ("prelabeling", "done") or (c and c.report):
        run = dict(c.report) if c else {}
        run["spent_usd"] = round(p["spent_usd"], 4)
        run["cap_usd"] = c.settings.max_cost_usd if c else None
        if "progress" in run:
            run["progress"] = with_rate(run["progress"], time.time())
        if c and c.memory.hold:
            run["hold"] = c.memory.hold.reason
            run["hold_kind"] = c.memory.hold.kind
        if c and c.memory.approval:
            run["approved"] = {
                "tasks": c.memory.approval.tasks,
                "cost_usd": c.memory.approval.cost_usd,
            }
        if c and c.blocker:
            run["blocked"] = c.blocker
        out["run"] = run
    return out


def order_status(p: dict, annotated: set[int], queue_ids: set[int], first: dict) -> dict:
    """Since when Label Studio serves the ALLabel order, and which annotations are ALLabel picks:
    queued tasks annotated after that. Until then Label Studio serves the project's previous
    order; a task annotated then is not a pick, even if the selection later queued it (it was
    being annotated while the selection ran). It still counts toward the budget, pre-chosen."""
    applied = p["applied_settings"]
    if applied and "ordered_at" not in applied:  # set by an earlier version: the switch unknown
        return {
            "since": applied.get("applied_at"),
            "picks": len(annotated & queue_ids),
            "annotated_before": 0,
        }
    since = (applied or {}).get("ordered_at")
    before = {t for t in annotated if since is None or _before(first.get(t), since)}
    picks = len((annotated & queue_ids) - before)
    return {"since": since, "picks": picks, "annotated_before": len(before)}


def _before(ls_time: str | None, epoch: float) -> bool:
    """A Label Studio timestamp (ISO 8601) lies before ``epoch``; unknown: not before."""
    try:
        return datetime.fromisoformat(str(ls_time).replace("Z", "+00:00")).timestamp() < epoch
    except ValueError:
        return False


def with_rate(progress: dict, now: float) -> dict:
    """Progress with its rate (tasks a minute) and the time left at that rate (None: unknown)."""
    out = dict(progress)
    finished = out.get("done", 0) + out.get("failed", 0)
    elapsed = now - out["started"] if out.get("started") else 0.0
    per_s = finished / elapsed if finished and elapsed > 0 else None
    left = max(out.get("total", 0) - finished, 0)
    out["rate_per_min"] = None if per_s is None else round(60 * per_s, 2)
    out["seconds_left"] = 0 if not left else (None if per_s is None else round(left / per_s))
    return out


def last_errors(preds, controller_errors: list[dict]) -> list[dict]:
    """The latest errors, newest first: the controller's (Label Studio, steps) and failed tasks."""
    failed = [
        {"at": None, "task": x.task_id, "error": x.error}
        for x in preds
        if x.result is None and x.error is not None
    ]
    return (list(reversed(controller_errors)) + failed)[:LAST_ERRORS]


def config_warnings(label_config: str) -> list[str]:
    try:
        warning = config_warning(parse_label_config(label_config))
    except ValueError as e:
        return [f"the labeling config cannot be used: {e}"]
    return [warning] if warning else []
