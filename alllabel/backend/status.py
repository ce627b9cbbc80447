"""What /status reports of a project, and the warnings shown there and in the log."""

from __future__ import annotations

from alllabel.backend.label_config import config_warning, parse_label_config
from alllabel.backend.state import State


def project_status(state: State, pid: int, controller=None) -> dict:
    """A project's progress as /status reports it (the controller adds what only it knows)."""
    p = state.project(pid)
    queue = state.queue(pid)
    annotated = state.annotated_tasks(pid)
    preds = state.predictions(pid)
    queue_ids = {q.task_id for q in queue}
    c = controller
    out = {
        "project": pid,
        "phase": p["phase"],
        "message": (c.error if c and c.error else None) or p["message"],
        "total_tasks": p["total_tasks"],
        "budget": p["budget"],
        "annotated_tasks": len(annotated),
        "annotated_from_queue": len(annotated & queue_ids),
        "unconfirmed_claims": len(state.claims(pid)),
        "queue": {"selected": len(queue), "pushed": sum(q.pushed is not None for q in queue)},
        "prelabels": {
            "done": sum(x.result is not None for x in preds.values()),
            "failed": sum(x.result is None and x.error is not None for x in preds.values()),
            "pushed": sum(x.result is not None and x.pushed == x.want for x in preds.values()),
        },
        "skipped_tasks": len(state.skipped(pid)),
        "detached": c.memory.detached if c else None,
        "warnings": config_warnings(p["label_config"]) + (list(c.memory.warnings) if c else []),
    }
    if p["phase"] in ("prelabeling", "done") or (c and c.report):
        run = dict(c.report) if c else {}
        run["spent_usd"] = round(p["spent_usd"], 4)
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


def config_warnings(label_config: str) -> list[str]:
    try:
        warning = config_warning(parse_label_config(label_config))
    except ValueError as e:
        return [f"the labeling config cannot be used: {e}"]
    return [warning] if warning else []
