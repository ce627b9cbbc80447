"""What a controller's actions do in Label Studio and the state (``controller.py`` applies them):
confirming claims, reading tasks, the project's settings and its Data Manager tabs."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from alllabel.backend import ls_format
from alllabel.backend.decide import CLAIM_CHECKS
from alllabel.backend.label_config import TextConfig
from alllabel.backend.ls_client import QUEUE_VIEW_TITLE, REVIEW_VIEW_TITLE, SAMPLING, LabelStudioAPI
from alllabel.backend.state import State

log = logging.getLogger("alllabel")

SYNC_MARGIN = timedelta(seconds=30)  # re-read tasks changed shortly before the last one seen


def confirm_claims(
    state: State, ls: LabelStudioAPI, pid: int, limit: int, retries: bool
) -> tuple[bool, bool]:
    """Read claimed annotations back from Label Studio (those read before too if ``retries``):
    (anything confirmed or dropped, any to read again shortly)."""
    changed = retry = False
    due = [c for c in state.claims(pid) if retries or c[2] == 0]
    for aid, task, checks, status in due[:limit]:
        seq = state.tick()
        a = ls.annotation(aid)
        if a is not None and a.get("project") not in (None, pid):
            a = None  # an annotation of another project: not ours to count
        if a is not None:
            link_parent(state, ls, pid, a)
            state.record_annotation(pid, a, seq)
            changed = True
        elif status != "claimed" or checks + 1 >= CLAIM_CHECKS:
            # Deleted (a known annotation is gone), or never there: a claim nobody can confirm.
            state.record_absent(pid, [aid], seq)
            if status == "claimed":
                log.warning(
                    "project %d: webhook reported annotation %d on task %d, which Label Studio "
                    "does not have: ignored",
                    pid,
                    aid,
                    task,
                )
            changed = True
        else:
            state.failed_check(pid, aid)  # maybe not committed yet: read again shortly
            retry = True
    return changed, retry


def link_parent(state: State, ls: LabelStudioAPI, pid: int, annotation: dict) -> None:
    """Learn the Label Studio id of our pre-annotation an annotation started from, when a bulk
    import left it unknown (one read): so the correction is scored (live accuracy)."""
    parent, task = annotation.get("parent_prediction"), annotation.get("task")
    if parent is None:
        return
    row = state.predictions(pid, [task]).get(task)
    if row is None or row.result is None or row.pushed is None or row.ls_id is not None:
        return
    p = ls.prediction(parent)
    if (
        p
        and p.get("task") == task
        and ls_format.digest(p.get("result") or [], p.get("score")) == row.pushed
    ):
        state.learn_ls_id(pid, task, parent)


def sync(state: State, ls: LabelStudioAPI, pid: int, cfg: TextConfig, *, full: bool) -> None:
    """Read tasks (all, or those changed since the watermark) with their annotations: facts as of now."""
    seq = state.tick()
    project = state.project(pid)
    if full:
        tasks = ls.tasks(pid)
        with_annotations = ls.tasks(pid, annotated=True, with_annotations=True)
    else:
        since = _minus(project["tasks_watermark"], SYNC_MARGIN)
        tasks = with_annotations = ls.tasks(pid, updated_after=since, with_annotations=True)
    rows, newest = [], project["tasks_watermark"]
    for t in tasks:
        text, reason = ls_format.task_text(t, cfg)
        rows.append((t["id"], text, reason, t.get("updated_at")))
        newest = _later(newest, t.get("updated_at"))
    state.upsert_tasks(pid, rows)
    if full:
        gone = state.remove_tasks_except(pid, {t["id"] for t in tasks})
        if gone:
            log.info("project %d: %d task(s) were deleted in Label Studio", pid, len(gone))
    # Annotations: those listed exist; ours on the same tasks that are not listed do not.
    listed = {t["id"]: t.get("annotations") or [] for t in with_annotations}
    scope = {t["id"] for t in tasks} if full else set(listed)
    present = set()
    for anns in listed.values():
        for a in anns:
            a = {**a, "task": a.get("task") or a.get("task_id")}
            link_parent(state, ls, pid, a)
            state.record_annotation(pid, a, seq)
            present.add(a["id"])
    known = state.annotation_ids(pid, scope)
    state.record_absent(pid, [a for a in known if a not in present], seq)
    for aid in state.unread_annotations(pid):  # content unknown (an upgrade from v1): read it
        a = ls.annotation(aid)
        if a is None:
            state.record_absent(pid, [aid], seq)
        else:
            state.record_annotation(pid, a, seq)
    state.update_project(pid, tasks_watermark=newest, total_tasks=len(state.task_ids(pid)))
    skipped = state.skipped(pid)
    if skipped and full:
        log.warning(
            "project %d: %d task(s) cannot be used and are left alone: %s",
            pid,
            len(skipped),
            dict(list(skipped.items())[:5]),
        )


def apply_settings(state: State, ls: LabelStudioAPI, pid: int, mv: str, show: bool) -> None:
    """The project settings the queue needs, set once (and again on Start Training only)."""
    want = {"sampling": SAMPLING, "model_version": mv, "show_collab_predictions": show}
    ls.update_project(pid, **want)
    now, before = time.time(), state.project(pid)["applied_settings"] or {}
    # ordered_at: since when Label Studio serves the ALLabel order (the first switch, kept).
    ordered = before.get("ordered_at") or now
    state.update_project(pid, applied_settings={**want, "applied_at": now, "ordered_at": ordered})
    log.info("project %d: %s", pid, ", ".join(f"{k} = {v!r}" for k, v in want.items()))


def create_queue_tab(state: State, ls: LabelStudioAPI, pid: int) -> None:
    """The "ALLabel queue" tab (found or created once)."""
    views = ls.views(pid)
    mine = next(
        (v["id"] for v in views if (v.get("data") or {}).get("title") == QUEUE_VIEW_TITLE), None
    )
    if mine is None:
        if not views:  # Label Studio shows its default tab only when a project has no tab at all
            ls.create_view(pid, {"title": "Default"})
        mine = ls.create_view(pid, queue_view())
    state.update_project(pid, view_id=mine)


def show_predictions(state: State, ls: LabelStudioAPI, pid: int) -> None:
    """At the budget, pre-annotations become visible to annotators - unless the user chose otherwise."""
    applied = state.project(pid)["applied_settings"] or {}
    if applied.get("show_collab_predictions") is not False:
        return
    if ls.project(pid).get("show_collab_predictions") is False:
        ls.update_project(pid, show_collab_predictions=True)
        state.update_project(pid, applied_settings={**applied, "show_collab_predictions": True})


def review_tab(ls: LabelStudioAPI, pid: int) -> None:
    """A Data Manager tab of the pre-annotated tasks, lowest confidence first (created once)."""
    if not any((v.get("data") or {}).get("title") == REVIEW_VIEW_TITLE for v in ls.views(pid)):
        ls.create_view(pid, review_view())


_UNANNOTATED = {
    "filter": "filter:tasks:total_annotations",
    "operator": "equal",
    "type": "Number",
    "value": 0,
}


def queue_view() -> dict:
    return {
        "title": QUEUE_VIEW_TITLE,
        "ordering": ["tasks:predictions_score"],
        "filters": {"conjunction": "and", "items": [_UNANNOTATED]},
    }


def review_view() -> dict:
    """The review tab: unannotated tasks with a pre-annotation, lowest confidence first. Queue
    entries (score = position x 1e-6) stay out of it while the queue is under 1,000 positions."""
    scored = {
        "filter": "filter:tasks:predictions_score",
        "operator": "greater",
        "type": "Number",
        "value": 0.001,
    }
    return {
        "title": REVIEW_VIEW_TITLE,
        "ordering": ["tasks:predictions_score"],
        "filters": {"conjunction": "and", "items": [_UNANNOTATED, scored]},
    }


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _later(a: str | None, b: str | None) -> str | None:
    da, db = _parse(a), _parse(b)
    if db is None:
        return a
    if da is None or db > da:
        return b
    return a


def _minus(ts: str | None, delta: timedelta) -> str | None:
    d = _parse(ts)
    return None if d is None else (d - delta).isoformat().replace("+00:00", "Z")
