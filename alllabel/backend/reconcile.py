"""Making Label Studio hold what the state says it should: one prediction of ours per task.

Desired: for every unannotated task, its pre-annotation if it has one, else its empty queue
entry (``ls_format.desired``). Held: the digest of what Label Studio has (``pushed``), kept up
to date by our own pushes and checked by an *audit* (a listing of our predictions in Label
Studio) whenever we cannot be sure: at start-up, after a failed or interrupted push, when Label
Studio's prediction count differs from ours, and on Start Training. The audit also deletes
duplicates, so every task ends with exactly one prediction of our model version.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from alllabel.backend import ls_format
from alllabel.backend.ls_client import LabelStudioAPI
from alllabel.backend.ls_format import digest
from alllabel.backend.state import State

log = logging.getLogger("alllabel")


def push(
    state: State,
    ls: LabelStudioAPI,
    pid: int,
    model_version: str,
    todo: dict[int, tuple[list, float, str]],
    batch: int,
) -> int:
    """Send ``todo`` (``State.pending_pushes``): new predictions in bulk imports, changed ones in place.

    Every task is claimed (marked as being sent) before any call, so a crash or a failed call
    leaves the tasks not yet confirmed marked unsure, and the next audit settles them. Returns
    the number of tasks sent."""
    preds = state.predictions(pid, todo)
    if any(preds[t].pushed is not None and preds[t].ls_id is None for t in todo):
        resolve_ids(state, ls, pid, model_version)
        preds = state.predictions(pid, todo)
    claimed = set(state.claim_push(pid, {t: (preds[t].pushed, todo[t][2]) for t in todo}))
    fresh = [t for t in todo if t in claimed and preds[t].pushed is None]
    changed = [t for t in todo if t in claimed and preds[t].pushed is not None]
    sent = 0
    for i in range(0, len(fresh), batch):
        chunk = fresh[i : i + batch]
        ls.import_predictions(
            pid, [ls_format.import_item(t, todo[t][0], todo[t][1], model_version) for t in chunk]
        )
        state.finish_push(pid, {t: todo[t][2] for t in chunk})
        sent += len(chunk)
    for t in changed:
        if (
            preds[t].ls_id is None
        ):  # held but not found by id (lost, or several): left unsure for the audit
            continue
        ls.update_prediction(preds[t].ls_id, todo[t][0], todo[t][1])
        state.finish_push(pid, {t: todo[t][2]})
        sent += 1
    return sent


def resolve_ids(state: State, ls: LabelStudioAPI, pid: int, model_version: str) -> None:
    """Learn the Label Studio ids of predictions we imported in bulk (the import does not return them)."""
    by_task = defaultdict(list)
    for p in ls.predictions(pid, model_version):
        by_task[p.task].append(p.id)
    known = state.predictions(pid)
    ids = {
        t: ids[0]
        for t, ids in by_task.items()
        if len(ids) == 1 and t in known and known[t].pushed is not None and known[t].pushing is None
    }
    state.finish_push(pid, {t: known[t].pushed for t in ids}, ids)


def audit(state: State, ls: LabelStudioAPI, pid: int, model_version: str) -> dict:
    """Compare what Label Studio holds with the state; delete duplicates; record what is held.

    Returns counts: held, missing, duplicates deleted, others (predictions of other versions)."""
    ours = state.predictions(pid)
    by_task = defaultdict(list)
    everything = ls.predictions(pid)
    for p in everything:
        if p.model_version == model_version:
            by_task[p.task].append(p)
    deleted = 0
    held: dict[int, tuple[str | None, int | None]] = {}
    for task, preds in by_task.items():
        row = ours.get(task)
        want = row.want if row else None
        known = row.ls_id if row else None
        # Keep the one we want, else the one we know, else the newest.
        keep = (
            next((p for p in preds if digest(p.result, p.score) == want), None)
            or next((p for p in preds if p.id == known), None)
            or max(preds, key=lambda p: p.id)
        )
        for p in preds:
            if p.id != keep.id:
                ls.delete_prediction(p.id)
                deleted += 1
        held[task] = (digest(keep.result, keep.score), keep.id)
    missing = [t for t in ours if t not in by_task]
    held.update({t: (None, None) for t in missing})
    state.set_held(pid, {t: v for t, v in held.items() if t in ours})
    if deleted:
        log.warning(
            "project %d: deleted %d duplicate prediction(s) of %r in Label Studio",
            pid,
            deleted,
            model_version,
        )
    return {
        "held": len(by_task),
        "missing": len(missing),
        "duplicates_deleted": deleted,
        "others": len(everything) - sum(map(len, by_task.values())),
    }
