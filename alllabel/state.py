"""Durable backend state in SQLite: what was selected, what humans annotated, what was pushed.

Everything the backend decides is written here before it is sent to Label Studio, so a restart
or crash resumes where it stopped without duplicate predictions or lost tasks.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id   INTEGER PRIMARY KEY,
    label_config TEXT NOT NULL,
    phase        TEXT NOT NULL DEFAULT 'new',   -- new | planned | prelabeling | done
    budget       INTEGER,                       -- human annotations wanted (M)
    total_tasks  INTEGER,
    message      TEXT,
    updated      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (              -- the ALLabel order, position 0 first
    project_id    INTEGER NOT NULL,
    task_id       INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    stage         TEXT NOT NULL,
    score         REAL NOT NULL,
    pushed        INTEGER NOT NULL DEFAULT 0,
    prediction_id INTEGER,
    PRIMARY KEY (project_id, task_id)
);
CREATE TABLE IF NOT EXISTS annotations (        -- human, non-cancelled annotations
    project_id    INTEGER NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id       INTEGER NOT NULL,
    PRIMARY KEY (project_id, annotation_id)
);
CREATE TABLE IF NOT EXISTS prelabels (          -- one pre-annotation per task
    project_id    INTEGER NOT NULL,
    task_id       INTEGER NOT NULL,
    result        TEXT,                         -- Label Studio result list (JSON), NULL on error
    score         REAL,
    annotator     TEXT,
    error         TEXT,
    pushed        INTEGER NOT NULL DEFAULT 0,
    prediction_id INTEGER,
    updated       REAL NOT NULL,
    PRIMARY KEY (project_id, task_id)
);
CREATE TABLE IF NOT EXISTS skipped (            -- tasks we cannot use, with the reason
    project_id INTEGER NOT NULL,
    task_id    INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (project_id, task_id)
);
"""


class State:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.sqlite3"
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def _q(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _many(self, sql: str, rows) -> None:
        with self._transaction() as db:
            db.executemany(sql, rows)

    # --- projects ------------------------------------------------------------------------------
    def register(self, project_id: int, label_config: str) -> None:
        self._q(
            "INSERT INTO projects (project_id, label_config, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(project_id) DO UPDATE SET label_config = excluded.label_config, updated = excluded.updated",
            (project_id, label_config, time.time()),
        )

    def project(self, project_id: int) -> dict | None:
        rows = self._q("SELECT project_id, label_config, phase, budget, total_tasks, message FROM projects WHERE project_id = ?", (project_id,))
        if not rows:
            return None
        keys = ("project_id", "label_config", "phase", "budget", "total_tasks", "message")
        return dict(zip(keys, rows[0]))

    def projects(self) -> list[int]:
        return [r[0] for r in self._q("SELECT project_id FROM projects ORDER BY project_id")]

    def update_project(self, project_id: int, **fields) -> None:
        allowed = {"phase", "budget", "total_tasks", "message"}
        if not set(fields) <= allowed:
            raise ValueError(f"unknown project fields {set(fields) - allowed}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._q(f"UPDATE projects SET {sets}, updated = ? WHERE project_id = ?", (*fields.values(), time.time(), project_id))

    # --- queue -----------------------------------------------------------------------------------
    def add_to_queue(self, project_id: int, entries: list[tuple[int, int, str, float]]) -> None:
        """entries: (task_id, position, stage, score); existing tasks are left as they are."""
        self._many(
            "INSERT OR IGNORE INTO queue (project_id, task_id, position, stage, score) VALUES (?, ?, ?, ?, ?)",
            [(project_id, t, p, s, sc) for t, p, s, sc in entries],
        )

    def queue(self, project_id: int) -> list[dict]:
        rows = self._q("SELECT task_id, position, stage, score, pushed, prediction_id FROM queue WHERE project_id = ? ORDER BY position", (project_id,))
        return [dict(zip(("task_id", "position", "stage", "score", "pushed", "prediction_id"), r)) for r in rows]

    def mark_queue_pushed(self, project_id: int, task_ids: list[int], ids: dict[int, int] | None = None) -> None:
        ids = ids or {}
        self._many(
            "UPDATE queue SET pushed = 1, prediction_id = COALESCE(?, prediction_id) WHERE project_id = ? AND task_id = ?",
            [(ids.get(t), project_id, t) for t in task_ids],
        )

    # --- annotations -----------------------------------------------------------------------------
    def record_annotation(self, project_id: int, annotation_id: int, task_id: int, cancelled: bool) -> None:
        if cancelled:
            self.delete_annotations(project_id, [annotation_id])
        else:
            self._q("INSERT OR REPLACE INTO annotations VALUES (?, ?, ?)", (project_id, annotation_id, task_id))

    def delete_annotations(self, project_id: int, annotation_ids: list[int]) -> None:
        self._many("DELETE FROM annotations WHERE project_id = ? AND annotation_id = ?", [(project_id, a) for a in annotation_ids])

    def replace_annotations(self, project_id: int, pairs: list[tuple[int, int]]) -> None:
        """Make the table equal Label Studio's view: (annotation_id, task_id) pairs."""
        with self._transaction() as db:
            db.execute("DELETE FROM annotations WHERE project_id = ?", (project_id,))
            db.executemany("INSERT OR REPLACE INTO annotations VALUES (?, ?, ?)", [(project_id, a, t) for a, t in pairs])

    def annotated_tasks(self, project_id: int) -> set[int]:
        return {r[0] for r in self._q("SELECT DISTINCT task_id FROM annotations WHERE project_id = ?", (project_id,))}

    # --- pre-annotations -------------------------------------------------------------------------
    def save_prelabel(self, project_id: int, task_id: int, result: list | None, score: float | None, annotator: str, error: str | None) -> None:
        self._q(
            "INSERT INTO prelabels (project_id, task_id, result, score, annotator, error, updated) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(project_id, task_id) DO UPDATE SET result = excluded.result, score = excluded.score, "
            "annotator = excluded.annotator, error = excluded.error, updated = excluded.updated WHERE prelabels.pushed = 0",
            (project_id, task_id, None if result is None else json.dumps(result, ensure_ascii=False), score, annotator, error, time.time()),
        )

    def prelabels(self, project_id: int, task_ids: list[int] | None = None) -> dict[int, dict]:
        """Stored pre-annotations (all, or those of ``task_ids``); ``result`` is None after an error."""
        sql = "SELECT task_id, result, score, annotator, error, pushed, prediction_id FROM prelabels WHERE project_id = ?"
        args: tuple = (project_id,)
        if task_ids is not None:
            if not task_ids:
                return {}
            sql += f" AND task_id IN ({','.join('?' * len(task_ids))})"
            args += tuple(task_ids)
        return {
            r[0]: {"result": None if r[1] is None else json.loads(r[1]), "score": r[2], "annotator": r[3], "error": r[4], "pushed": r[5], "prediction_id": r[6]}
            for r in self._q(sql, args)
        }

    def mark_prelabels_pushed(self, project_id: int, task_ids: list[int], ids: dict[int, int] | None = None) -> None:
        ids = ids or {}
        self._many(
            "UPDATE prelabels SET pushed = 1, prediction_id = COALESCE(?, prediction_id) WHERE project_id = ? AND task_id = ?",
            [(ids.get(t), project_id, t) for t in task_ids],
        )

    # --- skipped tasks ---------------------------------------------------------------------------
    def set_skipped(self, project_id: int, reasons: dict[int, str]) -> None:
        self._many("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?)", [(project_id, t, r) for t, r in reasons.items()])

    def skipped(self, project_id: int) -> dict[int, str]:
        return dict(self._q("SELECT task_id, reason FROM skipped WHERE project_id = ?", (project_id,)))

    # --- progress --------------------------------------------------------------------------------
    def status(self, project_id: int) -> dict | None:
        p = self.project(project_id)
        if p is None:
            return None
        q = self._q("SELECT COUNT(*), SUM(pushed) FROM queue WHERE project_id = ?", (project_id,))[0]
        pl = self._q(
            "SELECT COUNT(*), SUM(result IS NOT NULL), SUM(error IS NOT NULL), SUM(pushed) FROM prelabels WHERE project_id = ?", (project_id,)
        )[0]
        annotated = self.annotated_tasks(project_id)
        queue_tasks = {e["task_id"] for e in self.queue(project_id)}
        return {
            "project": project_id,
            "phase": p["phase"],
            "message": p["message"],
            "total_tasks": p["total_tasks"],
            "budget": p["budget"],
            "annotated_tasks": len(annotated),
            "annotated_from_queue": len(annotated & queue_tasks),
            "queue": {"selected": q[0], "pushed": q[1] or 0},
            "prelabels": {"done": pl[1] or 0, "failed": pl[2] or 0, "pushed": pl[3] or 0},
            "skipped_tasks": len(self.skipped(project_id)),
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
