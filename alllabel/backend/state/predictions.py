"""Our one prediction per task: queue entry and/or pre-annotation, and what Label Studio holds."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import NamedTuple

from alllabel.backend.ls_format import desired
from alllabel.backend.state.schema import refresh_want


class RunRow(NamedTuple):
    """What the run's decisions read of a prediction row (the result is not decoded)."""

    has_result: bool
    failures: int
    error: str | None
    position: int | None


@dataclass
class Prediction:
    """One row of the predictions table (our single prediction for a task)."""

    task_id: int
    position: int | None
    stage: str | None
    result: list | None
    score: float | None
    annotator: str | None
    version: dict | None
    error: str | None
    failures: int
    want: str | None
    ls_id: int | None
    pushed: str | None
    pushing: str | None


_PRED_COLS = ", ".join(f.name for f in fields(Prediction))
_JSON_COLS = ("result", "version")


def _prediction(row: sqlite3.Row) -> Prediction:
    """A predictions row, by column name (the JSON columns decoded)."""
    values = {k: row[k] for k in row.keys()}
    for k in _JSON_COLS:
        values[k] = None if values[k] is None else json.loads(values[k])
    return Prediction(**values)


class PredictionRows:
    # The connection, ``_q``, ``_many`` and ``_transaction`` come from ``store.State``.

    # --- predictions -----------------------------------------------------------------------------
    def predictions(
        self, project_id: int, task_ids: Iterable[int] | None = None
    ) -> dict[int, Prediction]:
        rows = self._rows(
            f"SELECT {_PRED_COLS} FROM predictions WHERE project_id = ?", (project_id,)
        )
        out = {r["task_id"]: _prediction(r) for r in rows}
        if task_ids is not None:
            wanted = set(task_ids)
            out = {t: p for t, p in out.items() if t in wanted}
        return out

    def run_rows(self, project_id: int) -> dict[int, RunRow]:
        """task -> ``RunRow``: read at every step of a run, so no result is decoded (at 10,000
        pre-annotated tasks ``predictions`` took 1.06 s here, this 0.03 s)."""
        rows = self._q(
            "SELECT task_id, result IS NOT NULL, failures, error, position FROM predictions "
            "WHERE project_id = ?",
            (project_id,),
        )
        return {t: RunRow(bool(has), f, e, pos) for t, has, f, e, pos in rows}

    def predicted_task_ids(self, project_id: int) -> set[int]:
        """Tasks with a row of ours (queued, pre-annotated, or failed)."""
        return {
            r[0]
            for r in self._q("SELECT task_id FROM predictions WHERE project_id = ?", (project_id,))
        }

    def queue(self, project_id: int) -> list[Prediction]:
        """The ALLabel order: queued tasks by position."""
        rows = self._rows(
            f"SELECT {_PRED_COLS} FROM predictions WHERE project_id = ? AND position IS NOT NULL ORDER BY position",
            (project_id,),
        )
        return [_prediction(r) for r in rows]

    def add_to_queue(self, project_id: int, entries: list[tuple[int, int, str]]) -> None:
        """entries: (task_id, position, stage); tasks already queued keep their place."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO predictions (project_id, task_id, position, stage, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(project_id, task_id) DO UPDATE SET position = excluded.position, stage = excluded.stage, updated = excluded.updated "
                "WHERE predictions.position IS NULL",
                [(project_id, t, p, s, now) for t, p, s in entries],
            )
            self._refresh(db, project_id, [t for t, _, _ in entries])

    def _refresh(self, db: sqlite3.Connection, project_id: int, task_ids: list[int]) -> None:
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i : i + 500]
            refresh_want(
                db,
                f"project_id = ? AND task_id IN ({','.join('?' * len(chunk))})",
                (project_id, *chunk),
            )

    def save_prelabel(
        self,
        project_id: int,
        task_id: int,
        result: list | None,
        score: float | None,
        annotator: str,
        version: dict | None,
        error: str | None,
    ) -> None:
        """A pre-annotation (or the error that prevented it). A failure keeps an earlier pre-annotation."""
        with self._transaction() as db:
            if result is None:
                db.execute(
                    "INSERT INTO predictions (project_id, task_id, annotator, error, failures, updated) VALUES (?, ?, ?, ?, 1, ?) "
                    "ON CONFLICT(project_id, task_id) DO UPDATE SET error = excluded.error, failures = predictions.failures + 1, updated = excluded.updated",
                    (project_id, task_id, annotator, error, time.time()),
                )
            else:
                db.execute(
                    "INSERT INTO predictions (project_id, task_id, result, score, annotator, version, updated) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(project_id, task_id) DO UPDATE SET result = excluded.result, score = excluded.score, annotator = excluded.annotator, "
                    "version = excluded.version, error = NULL, failures = 0, updated = excluded.updated",
                    (
                        project_id,
                        task_id,
                        json.dumps(result, ensure_ascii=False),
                        score,
                        annotator,
                        None if version is None else json.dumps(version, sort_keys=True),
                        time.time(),
                    ),
                )
            self._refresh(db, project_id, [task_id])

    _PENDING = (
        "FROM predictions p WHERE p.project_id = ? AND p.want IS NOT NULL AND p.pushing IS NULL AND p.pushed IS NOT p.want "
        "AND NOT EXISTS (SELECT 1 FROM annotations a WHERE a.project_id = p.project_id AND a.task_id = p.task_id "
        "AND a.status = 'verified' AND a.cancelled = 0)"
    )

    def pending_pushes(self, project_id: int) -> dict[int, tuple[list, float, str]]:
        """task -> (result, score, digest) Label Studio should hold but does not. Annotated tasks
        are left alone: a human has answered them, whatever we had is moot."""
        out = {}
        for t, result, score, position, want in self._q(
            f"SELECT p.task_id, p.result, p.score, p.position, p.want {self._PENDING}",
            (project_id,),
        ):
            result, score = desired(None if result is None else json.loads(result), score, position)
            out[t] = (result, score, want)
        return out

    def available(self, project_id: int, assume_annotated: Iterable[int] = ()) -> int:
        """Unannotated tasks Label Studio can serve in our order: queued, or pre-annotated and held (one
        computed but not pushed yet does not keep an annotator off a random task)."""
        extra = list(assume_annotated)
        besides = (
            f"AND p.task_id NOT IN ({','.join('?' * len(extra))}) " if extra else ""
        )  # (NOT IN (NULL) matches nothing)
        return self._q(
            "SELECT COUNT(*) FROM predictions p WHERE p.project_id = ? AND (p.position IS NOT NULL OR (p.result IS NOT NULL AND p.pushed IS NOT NULL)) "
            f"{besides}AND NOT EXISTS (SELECT 1 FROM annotations a WHERE a.project_id = p.project_id "
            "AND a.task_id = p.task_id AND a.status = 'verified' AND a.cancelled = 0)",
            (project_id, *extra),
        )[0][0]

    def next_position(self, project_id: int) -> int:
        return (
            self._q("SELECT MAX(position) FROM predictions WHERE project_id = ?", (project_id,))[0][
                0
            ]
            or -1
        ) + 1

    def pending_summary(self, project_id: int) -> tuple[int, float | None]:
        """(number of pending pushes, time.time() of the oldest change among them)."""
        n, oldest = self._q(f"SELECT COUNT(*), MIN(p.updated) {self._PENDING}", (project_id,))[0]
        return n, oldest

    def claim_push(self, project_id: int, wanted: dict[int, tuple[str | None, str]]) -> list[int]:
        """Write-ahead before sending: task -> (digest we believe Label Studio holds, digest to send).

        A task is claimed only if nothing changed meanwhile (no other push, no pull through
        /predict); the claim stays set if we crash mid-call, so the next audit settles it."""
        claimed = []
        with self._transaction() as db:
            for t, (held, d) in wanted.items():
                cur = db.execute(
                    "UPDATE predictions SET pushing = ? WHERE project_id = ? AND task_id = ? AND pushing IS NULL AND pushed IS ?",
                    (d, project_id, t, held),
                )
                if cur.rowcount:
                    claimed.append(t)
        return claimed

    def pulled(self, project_id: int, task_id: int, digest_: str) -> bool:
        """Label Studio asked /predict for a task it holds nothing of ours for, and gets ``digest_``.

        True if we may answer (nothing pushed or being pushed for it), recording it as held."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE predictions SET pushed = ? WHERE project_id = ? AND task_id = ? AND pushing IS NULL AND pushed IS NULL",
                (digest_, project_id, task_id),
            )
            return cur.rowcount == 1

    def finish_push(
        self, project_id: int, digests: dict[int, str], ls_ids: dict[int, int] | None = None
    ) -> None:
        """Label Studio holds these digests now (with these prediction ids, where known)."""
        ls_ids = ls_ids or {}
        self._many(
            "UPDATE predictions SET pushed = ?, pushing = NULL, ls_id = COALESCE(?, ls_id) WHERE project_id = ? AND task_id = ?",
            [(d, ls_ids.get(t), project_id, t) for t, d in digests.items()],
        )

    def learn_ls_id(self, project_id: int, task_id: int, ls_id: int) -> None:
        """Label Studio's id of our prediction on the task, learnt from an annotation's parent."""
        self._q(
            "UPDATE predictions SET ls_id = ? WHERE project_id = ? AND task_id = ? AND ls_id IS NULL",
            (ls_id, project_id, task_id),
        )

    def set_held(self, project_id: int, held: dict[int, tuple[str | None, int | None]]) -> None:
        """What an audit of Label Studio found: task -> (digest it holds or None, its prediction id)."""
        self._many(
            "UPDATE predictions SET pushed = ?, ls_id = ?, pushing = NULL WHERE project_id = ? AND task_id = ?",
            [(d, i, project_id, t) for t, (d, i) in held.items()],
        )

    def unsure_pushes(self, project_id: int) -> int:
        return self._q(
            "SELECT COUNT(*) FROM predictions WHERE project_id = ? AND pushing IS NOT NULL",
            (project_id,),
        )[0][0]

    def pushed_count(self, project_id: int) -> int:
        return self._q(
            "SELECT COUNT(*) FROM predictions WHERE project_id = ? AND pushed IS NOT NULL",
            (project_id,),
        )[0][0]
