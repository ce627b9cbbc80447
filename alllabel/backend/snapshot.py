"""One snapshot of a project for ``decide``: the state's rows, in the shape decisions need."""

from __future__ import annotations

import functools
import time

from alllabel.backend import actions as A
from alllabel.backend.label_config import UnsupportedConfig, parse_label_config
from alllabel.backend.runner import gold_key
from alllabel.backend.state import State


def read_snapshot(
    st: State,
    pid: int,
    memory: A.Memory,
    *,
    run_alive: bool,
    batch_poll: float,
    annotator_name: str,
    spares: int = 0,
    done: tuple[str, ...] = (),
) -> A.Snapshot:
    """The project as the state holds it, with the controller's memory (what LS last reported)."""
    p = st.project(pid)
    usable = st.usable_task_ids(pid)
    annotated_all = st.annotated_tasks(pid)
    annotated = frozenset(annotated_all & set(usable))
    pending, oldest = st.pending_summary(pid)
    claims = st.claims(pid)
    extra = (
        _run_fields(st.run_rows(pid), usable, annotated)
        if p["phase"] in ("prelabeling", "done")
        else {}
    )
    if memory.hold is not None and memory.hold.kind == "min_f1":
        extra["gold_key"] = gold_key(st, pid)
    pushed = st.pushed_count(pid)
    return A.Snapshot(
        memory=memory,
        wall=time.time(),
        project=pid,
        phase=p["phase"],
        label_config=p["label_config"],
        message=p["message"],
        budget=p["budget"],
        applied=p["applied_settings"],
        view_id=p["view_id"],
        claims=len(claims),
        fresh_claims=sum(1 for c in claims if c[2] == 0),
        counts={
            "task_number": len(st.task_ids(pid)),
            "total_annotations_number": st.annotation_count(pid)[0],
            "num_tasks_with_annotations": len(annotated_all),
        },
        expected_predictions=(p["predictions_baseline"] or 0) + pushed,
        pushed=pushed,
        usable=tuple(usable),
        annotated=annotated,
        predicted=frozenset(st.predicted_task_ids(pid)),
        available=st.available(pid),
        spares=spares,
        pending=pending,
        oldest_pending=oldest,
        unsure=st.unsure_pushes(pid),
        run_alive=run_alive,
        batch_poll=batch_poll,
        annotator_name=annotator_name,
        prelabels=_prelabels(p["label_config"]),
        done=done,
        **extra,
    )


def _run_fields(preds: dict, usable: list[int], annotated: frozenset[int]) -> dict:
    """What the run's decisions need: tasks left to pre-annotate, failures, queue positions."""
    todo = [t for t in usable if t not in annotated and not (t in preds and preds[t].has_result)]
    return {
        "todo": tuple(todo),
        "failed": frozenset(t for t in todo if preds.get(t) and preds[t].failures),
        "first_error": next((preds[t].error for t in todo if t in preds and preds[t].error), None),
        "prelabeled": sum(x.has_result for x in preds.values()),
        "queue_positions": {t: x.position for t, x in preds.items() if x.position is not None},
    }


@functools.lru_cache(maxsize=16)  # parsed once per config, not at every snapshot
def _prelabels(label_config: str) -> bool:
    try:
        return parse_label_config(label_config).prelabeled is not None
    except UnsupportedConfig:
        return True  # a registered config was readable: the run reports what changed
