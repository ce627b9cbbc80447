"""Live accuracy: how the annotators' corrections of our pre-annotations score them.

A reviewed task is one whose latest human annotation started from our pre-annotation (Label
Studio's ``parent_prediction``; the state keeps a copy of the prediction and its version). Our
spans are scored against the human's: strict span matching (start, end and label equal), counts
summed over the reviewed tasks, per label and per model version (model and prompt fingerprint:
the demonstrations change with every run and are not part of it). ``live_gate`` says when a
version is below ``ALLABEL_MIN_LIVE_F1``. Pure functions over what the state holds.
"""

from __future__ import annotations

from collections.abc import Iterable


def spans_of(result: list) -> set[tuple[int, int, str]]:
    """(start, end, label) of every labeled span in a Label Studio result list."""
    out = set()
    for r in result or []:
        v = r.get("value") or {}
        if isinstance(v.get("start"), int) and isinstance(v.get("end"), int):
            out.update((v["start"], v["end"], label) for label in v.get("labels") or [])
    return out


def version_key(version: dict) -> str:
    """A version's name in /status: its model and prompt fingerprint."""
    prompt = str(version.get("prompt") or "")[:8]
    return f"{version.get('model') or version.get('annotator') or 'unknown'} prompt {prompt}"


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}


def score(pairs: Iterable[tuple[list, list]]) -> dict:
    """Span P/R/F1 of (ours, human) result pairs, overall and per label (1.0 when both are empty)."""
    counts: dict[str, list[int]] = {}  # label -> [tp, fp, fn]
    tasks = 0
    for ours, human in pairs:
        tasks += 1
        o, h = spans_of(ours), spans_of(human)
        for label in {s[2] for s in o | h}:
            c = counts.setdefault(label, [0, 0, 0])
            ol = {s for s in o if s[2] == label}
            hl = {s for s in h if s[2] == label}
            c[0] += len(ol & hl)
            c[1] += len(ol - hl)
            c[2] += len(hl - ol)
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    overall = prf(tp, fp, fn) if tp + fp + fn else {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    per_label = {
        label: {**prf(*c), "human": c[0] + c[2], "ours": c[0] + c[1]}
        for label, c in sorted(counts.items())
    }
    return {"tasks": tasks, **overall, "per_label": per_label}


def live_accuracy(reviewed: dict[int, tuple[list, dict, list]]) -> dict:
    """/status's ``live_accuracy``: per version, from ``State.reviewed`` (task -> (ours, version,
    human))."""
    by_version: dict[str, list[tuple[list, list]]] = {}
    for ours, version, human in reviewed.values():
        by_version.setdefault(version_key(version), []).append((ours, human))
    return {
        "reviewed_tasks": len(reviewed),
        "versions": {k: score(pairs) for k, pairs in sorted(by_version.items())},
    }


def live_gate(
    live: dict, min_f1: float | None, min_tasks: int, accepted: frozenset = frozenset()
) -> list[tuple[str, dict]]:
    """The versions below the minimum live F1 with at least ``min_tasks`` reviewed tasks (those
    the user let go on with Start Training excepted)."""
    if min_f1 is None:
        return []
    return [
        (k, m)
        for k, m in live["versions"].items()
        if m["tasks"] >= min_tasks and m["f1"] < min_f1 and k not in accepted
    ]
