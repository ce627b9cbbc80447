"""Durable backend state in SQLite: the tasks, the human annotations, our predictions.

Everything the backend decides is written here before it is sent to Label Studio, so a restart
or crash resumes where it stopped without duplicate predictions or lost tasks.

Annotations only change on facts. Every change is stamped with a value of a monotonic clock
(``State.tick``). A snapshot of Label Studio taken from clock value S may remove an annotation
only if the annotation's last fact is older than S: an annotation a webhook reported while the
snapshot was being fetched is never erased by it, and a deletion reported meanwhile is never
undone by it. Webhooks themselves are *claims* (status ``claimed``) until Label Studio confirms
them (``verified``); only verified annotations count toward the budget.

The schema is versioned (``PRAGMA user_version``); ``MIGRATIONS`` upgrade older files in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alllabel.backend.ls_format import desired, desired_digest, digest

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE projects (
    project_id       INTEGER PRIMARY KEY,
    label_config     TEXT NOT NULL,
    phase            TEXT NOT NULL DEFAULT 'new',  -- new | planned | prelabeling | done
    budget           INTEGER,                      -- human-annotated tasks wanted (M)
    total_tasks      INTEGER,
    message          TEXT,
    updated          REAL NOT NULL,
    applied_settings TEXT,     -- JSON: the project settings we set; NULL until we set them
    view_id          INTEGER,  -- the Data Manager tab we created (never touched again)
    tasks_watermark  TEXT,     -- Label Studio's updated_at of the newest task change seen
    predictions_baseline INTEGER,  -- predictions of other model versions at the last audit
    spent_usd        REAL NOT NULL DEFAULT 0,  -- LLM spend counted against ALLABEL_MAX_COST_USD
    run_approved     INTEGER NOT NULL DEFAULT 0  -- Start Training pressed (ALLABEL_PRELABEL_START=manual)
);
CREATE TABLE tasks (
    project_id  INTEGER NOT NULL,
    task_id     INTEGER NOT NULL,
    text        TEXT,             -- NULL when the task cannot be used (see skip_reason)
    skip_reason TEXT,
    ls_updated  TEXT,             -- Label Studio's updated_at when we last read the task
    PRIMARY KEY (project_id, task_id)
);
CREATE TABLE annotations (
    project_id    INTEGER NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id       INTEGER NOT NULL,
    status        TEXT NOT NULL,   -- claimed (never confirmed yet) | verified | deleted
    pending       INTEGER NOT NULL DEFAULT 0,  -- a webhook claim about it is still to be checked
    cancelled     INTEGER NOT NULL DEFAULT 0,
    result        TEXT,            -- Label Studio result list (JSON), once verified
    ls_updated    TEXT,            -- the annotation's updated_at: the latest one is the task's answer
    seq           INTEGER NOT NULL,  -- clock value of the last fact about this annotation
    checks        INTEGER NOT NULL DEFAULT 0,  -- failed verifications of a claim
    PRIMARY KEY (project_id, annotation_id)
);
CREATE TABLE predictions (      -- at most one of ours per task: queue entry and/or pre-annotation
    project_id  INTEGER NOT NULL,
    task_id     INTEGER NOT NULL,
    position    INTEGER,           -- place in the ALLabel queue (NULL: not queued)
    stage       TEXT,              -- diversity | similarity | uncertainty (queue entries)
    result      TEXT,              -- pre-annotation (JSON result list); NULL: none yet
    score       REAL,              -- its confidence
    annotator   TEXT,
    version     TEXT,              -- what produced it (model, prompt, demonstrations)
    error       TEXT,              -- why the last pre-annotation attempt failed
    failures    INTEGER NOT NULL DEFAULT 0,
    want        TEXT,              -- digest of what Label Studio should hold (ls_format.desired)
    ls_id       INTEGER,           -- the prediction's id in Label Studio, when known
    pushed      TEXT,              -- digest of what Label Studio holds; NULL: nothing
    pushing     TEXT,              -- digest being sent (set before the call): unsure after a crash
    updated     REAL NOT NULL,
    PRIMARY KEY (project_id, task_id)
);
CREATE INDEX annotations_by_task ON annotations (project_id, task_id);
CREATE TABLE clock (value INTEGER NOT NULL);
INSERT INTO clock VALUES (0);
"""


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run statements inside the current transaction (``executescript`` would commit it)."""
    for statement in sql.split(";\n"):
        if statement.strip():
            db.execute(statement)


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """First release: queue and prelabels were twin tables; annotations had no clock."""
    old = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for name in ("projects", "queue", "annotations", "prelabels", "skipped"):
        if name in old:
            db.execute(f"ALTER TABLE {name} RENAME TO v1_{name}")
    _script(db, SCHEMA)
    if "projects" in old:
        db.execute(
            "INSERT INTO projects (project_id, label_config, phase, budget, total_tasks, message, updated, applied_settings) "
            "SELECT project_id, label_config, phase, budget, total_tasks, message, updated, "
            # v1 set the queue settings at its first plan: record them as applied.
            "CASE WHEN phase = 'new' THEN NULL ELSE '{\"sampling\": \"Uncertainty sampling\"}' END FROM v1_projects"
        )
    if "annotations" in old:
        # Verified facts from v1; their content is read again at the first sync.
        db.execute(
            "INSERT INTO annotations (project_id, annotation_id, task_id, status, seq) SELECT project_id, annotation_id, task_id, 'verified', 0 FROM v1_annotations"
        )
    if "skipped" in old:
        db.execute(
            "INSERT INTO tasks (project_id, task_id, skip_reason) SELECT project_id, task_id, reason FROM v1_skipped"
        )
    now = time.time()
    if "queue" in old:
        for pid, tid, pos, stage, score, pushed, ls_id in db.execute(
            "SELECT project_id, task_id, position, stage, score, pushed, prediction_id FROM v1_queue"
        ).fetchall():
            db.execute(
                "INSERT INTO predictions (project_id, task_id, position, stage, ls_id, pushed, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pid, tid, pos, stage, ls_id, digest([], score) if pushed else None, now),
            )
    if "prelabels" in old:
        for pid, tid, result, score, annotator, error, pushed, ls_id in db.execute(
            "SELECT project_id, task_id, result, score, annotator, error, pushed, prediction_id FROM v1_prelabels"
        ).fetchall():
            db.execute(
                "INSERT INTO predictions (project_id, task_id, result, score, annotator, error, failures, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(project_id, task_id) DO UPDATE SET result = excluded.result, score = excluded.score, "
                "annotator = excluded.annotator, error = excluded.error, failures = excluded.failures",
                (pid, tid, result, score, annotator, error, int(error is not None), now),
            )
            if pushed and result is not None:
                db.execute(
                    "UPDATE predictions SET pushed = ?, ls_id = COALESCE(?, ls_id) WHERE project_id = ? AND task_id = ?",
                    (digest(json.loads(result), score), ls_id, pid, tid),
                )
    for name in old & {"projects", "queue", "annotations", "prelabels", "skipped"}:
        db.execute(f"DROP TABLE v1_{name}")
    _refresh_want(db, "1 = 1", ())


def _refresh_want(db: sqlite3.Connection, where: str, args: tuple) -> None:
    rows = db.execute(
        f"SELECT project_id, task_id, result, score, position FROM predictions WHERE {where}", args
    ).fetchall()
    db.executemany(
        "UPDATE predictions SET want = ? WHERE project_id = ? AND task_id = ?",
        [
            (desired_digest(None if r is None else json.loads(r), sc, pos), pid, t)
            for pid, t, r, sc, pos in rows
        ],
    )


MIGRATIONS = {1: _v1_to_v2}  # from version -> function upgrading to version + 1


class DirectoryLock:
    """One backend process per state directory: two would drive the same projects and push twice.

    An exclusive ``flock`` on ``<dir>/backend.lock``, released when the process ends (even by a
    crash). A new process waits up to ``wait`` seconds for a previous one to finish exiting."""

    def __init__(self, directory: str | Path, wait: float = 60.0):
        import fcntl
        import logging

        self.path = Path(directory) / "backend.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.path.read_text().strip() or "?"
                if time.monotonic() >= deadline:
                    self._file.close()
                    raise RuntimeError(
                        f"another alllabel process (pid {holder}) is using the state in {self.path.parent}: stop it first, "
                        "or give this one its own ALLABEL_STATE_DIR (run one gunicorn worker; with a backend running, use "
                        "Start Training in Label Studio rather than 'alllabel prelabel --project')"
                    ) from None
                logging.getLogger("alllabel").warning(
                    "waiting for process %s to release %s", holder, self.path
                )
                time.sleep(0.5)
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor releases the lock


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


_PRED_COLS = "task_id, position, stage, result, score, annotator, version, error, failures, want, ls_id, pushed, pushing"


def _prediction(row: tuple) -> Prediction:
    values = list(row)
    values[3] = None if values[3] is None else json.loads(values[3])
    values[6] = None if values[6] is None else json.loads(values[6])
    return Prediction(*values)


class State:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.sqlite3"
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if version == 0 and not tables:
                _script(db, SCHEMA)
            else:
                version = version or 1  # the first release never set user_version
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} was written by a newer alllabel (schema {version}, this one knows {SCHEMA_VERSION}): upgrade alllabel"
                    )
                while version < SCHEMA_VERSION:
                    MIGRATIONS[version](db)
                    version += 1
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _q(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _many(self, sql: str, rows) -> None:
        with self._transaction() as db:
            db.executemany(sql, rows)

    def tick(self) -> int:
        """The next value of the clock that orders facts about annotations."""
        with self._transaction() as db:
            db.execute("UPDATE clock SET value = value + 1")
            return db.execute("SELECT value FROM clock").fetchone()[0]

    # --- projects ------------------------------------------------------------------------------
    _PROJECT_FIELDS = (
        "project_id",
        "label_config",
        "phase",
        "budget",
        "total_tasks",
        "message",
        "applied_settings",
        "view_id",
        "tasks_watermark",
        "predictions_baseline",
        "spent_usd",
        "run_approved",
    )

    def register(self, project_id: int, label_config: str) -> None:
        self._q(
            "INSERT INTO projects (project_id, label_config, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(project_id) DO UPDATE SET label_config = excluded.label_config, updated = excluded.updated",
            (project_id, label_config, time.time()),
        )

    def project(self, project_id: int) -> dict | None:
        rows = self._q(
            f"SELECT {', '.join(self._PROJECT_FIELDS)} FROM projects WHERE project_id = ?",
            (project_id,),
        )
        if not rows:
            return None
        p = dict(zip(self._PROJECT_FIELDS, rows[0]))
        p["applied_settings"] = json.loads(p["applied_settings"]) if p["applied_settings"] else None
        return p

    def add_spent(self, project_id: int, usd: float) -> None:
        if usd:
            self._q(
                "UPDATE projects SET spent_usd = spent_usd + ? WHERE project_id = ?",
                (usd, project_id),
            )

    def projects(self) -> list[int]:
        return [r[0] for r in self._q("SELECT project_id FROM projects ORDER BY project_id")]

    def update_project(self, project_id: int, **fields) -> None:
        allowed = set(self._PROJECT_FIELDS) - {"project_id", "label_config"}
        if not set(fields) <= allowed:
            raise ValueError(f"unknown project fields {set(fields) - allowed}")
        if "applied_settings" in fields and fields["applied_settings"] is not None:
            fields["applied_settings"] = json.dumps(fields["applied_settings"], sort_keys=True)
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._q(
            f"UPDATE projects SET {sets}, updated = ? WHERE project_id = ?",
            (*fields.values(), time.time(), project_id),
        )

    # --- tasks -----------------------------------------------------------------------------------
    def upsert_tasks(
        self, project_id: int, tasks: Iterable[tuple[int, str | None, str | None, str | None]]
    ) -> None:
        """tasks: (task_id, text or None, skip reason or None, Label Studio's updated_at)."""
        self._many(
            "INSERT INTO tasks (project_id, task_id, text, skip_reason, ls_updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(project_id, task_id) DO UPDATE SET text = excluded.text, skip_reason = excluded.skip_reason, ls_updated = excluded.ls_updated",
            [(project_id, t, text, reason, updated) for t, text, reason, updated in tasks],
        )

    def remove_tasks_except(self, project_id: int, keep: set[int]) -> list[int]:
        """A complete task listing: tasks Label Studio no longer has are forgotten (with our rows for them)."""
        gone = [t for t in self.task_ids(project_id) if t not in keep]
        with self._transaction() as db:
            for sql in (
                "DELETE FROM tasks WHERE project_id = ? AND task_id = ?",
                "DELETE FROM predictions WHERE project_id = ? AND task_id = ?",
            ):
                db.executemany(sql, [(project_id, t) for t in gone])
        return gone

    def task_ids(self, project_id: int) -> list[int]:
        return [
            r[0]
            for r in self._q(
                "SELECT task_id FROM tasks WHERE project_id = ? ORDER BY task_id", (project_id,)
            )
        ]

    def usable_tasks(self, project_id: int) -> list[tuple[int, str]]:
        """(task_id, text) of every task with usable text, by task id."""
        return self._q(
            "SELECT task_id, text FROM tasks WHERE project_id = ? AND text IS NOT NULL ORDER BY task_id",
            (project_id,),
        )

    def usable_task_ids(self, project_id: int) -> list[int]:
        return [
            r[0]
            for r in self._q(
                "SELECT task_id FROM tasks WHERE project_id = ? AND text IS NOT NULL ORDER BY task_id",
                (project_id,),
            )
        ]

    def skipped(self, project_id: int) -> dict[int, str]:
        return dict(
            self._q(
                "SELECT task_id, skip_reason FROM tasks WHERE project_id = ? AND skip_reason IS NOT NULL",
                (project_id,),
            )
        )

    def task_updates(self, project_id: int) -> dict[int, str | None]:
        return dict(
            self._q("SELECT task_id, ls_updated FROM tasks WHERE project_id = ?", (project_id,))
        )

    # --- annotations: facts and claims -----------------------------------------------------------
    def claim_annotations(self, project_id: int, claims: Iterable[tuple[int, int]]) -> None:
        """A webhook says (annotation_id, task_id) was created or changed: check it with Label Studio."""
        seq = self.tick()
        self._many(
            "INSERT INTO annotations (project_id, annotation_id, task_id, status, pending, seq) VALUES (?, ?, ?, 'claimed', 1, ?) "
            "ON CONFLICT(project_id, annotation_id) DO UPDATE SET pending = 1, checks = 0, seq = excluded.seq",
            [(project_id, a, t, seq) for a, t in claims],
        )

    def claim_deletions(self, project_id: int, annotation_ids: Iterable[int]) -> None:
        """A webhook says these annotations were deleted: known ones are checked with Label Studio."""
        seq = self.tick()
        self._many(
            "UPDATE annotations SET pending = 1, checks = 0, seq = ? WHERE project_id = ? AND annotation_id = ? AND status != 'deleted'",
            [(seq, project_id, a) for a in annotation_ids],
        )

    def claims(self, project_id: int) -> list[tuple[int, int, int, str]]:
        """(annotation_id, task_id, failed checks, status) of the claims still to check."""
        return self._q(
            "SELECT annotation_id, task_id, checks, status FROM annotations WHERE project_id = ? AND pending = 1 ORDER BY seq",
            (project_id,),
        )

    def record_annotation(self, project_id: int, annotation: dict, seq: int) -> None:
        """A fact read from Label Studio at clock ``seq``: the annotation exists as given."""
        self._q(
            "INSERT INTO annotations (project_id, annotation_id, task_id, status, cancelled, result, ls_updated, seq) "
            "VALUES (?, ?, ?, 'verified', ?, ?, ?, ?) ON CONFLICT(project_id, annotation_id) DO UPDATE SET "
            "task_id = excluded.task_id, status = 'verified', pending = 0, cancelled = excluded.cancelled, result = excluded.result, "
            "ls_updated = excluded.ls_updated, seq = excluded.seq, checks = 0 WHERE annotations.seq <= excluded.seq",
            (
                project_id,
                annotation["id"],
                annotation["task"],
                int(bool(annotation.get("was_cancelled"))),
                json.dumps(annotation.get("result") or [], ensure_ascii=False),
                annotation.get("updated_at"),
                seq,
            ),
        )

    def record_absent(self, project_id: int, annotation_ids: Iterable[int], seq: int) -> None:
        """A fact read from Label Studio at clock ``seq``: these annotations do not exist (any more)."""
        self._many(
            "UPDATE annotations SET status = 'deleted', pending = 0, seq = ? WHERE project_id = ? AND annotation_id = ? AND seq <= ?",
            [(seq, project_id, a, seq) for a in annotation_ids],
        )

    def failed_check(self, project_id: int, annotation_id: int) -> None:
        self._q(
            "UPDATE annotations SET checks = checks + 1 WHERE project_id = ? AND annotation_id = ?",
            (project_id, annotation_id),
        )

    def annotation_ids(
        self,
        project_id: int,
        task_ids: Iterable[int] | None = None,
        statuses=("claimed", "verified"),
    ) -> dict[int, tuple[int, str, int]]:
        """annotation_id -> (task_id, status, seq), for live annotations (of some tasks)."""
        marks = ",".join("?" * len(statuses))
        rows = self._q(
            f"SELECT annotation_id, task_id, status, seq FROM annotations WHERE project_id = ? AND status IN ({marks})",
            (project_id, *statuses),
        )
        if task_ids is not None:
            wanted = set(task_ids)
            rows = [r for r in rows if r[1] in wanted]
        return {a: (t, s, q) for a, t, s, q in rows}

    def annotated_tasks(self, project_id: int) -> set[int]:
        """Tasks with at least one verified, non-cancelled annotation: what the budget counts."""
        return {
            r[0]
            for r in self._q(
                "SELECT DISTINCT task_id FROM annotations WHERE project_id = ? AND status = 'verified' AND cancelled = 0",
                (project_id,),
            )
        }

    def annotation_count(self, project_id: int) -> tuple[int, int]:
        """(verified non-cancelled annotations, verified cancelled ones), to compare with Label Studio's counts."""
        row = self._q(
            "SELECT SUM(cancelled = 0), SUM(cancelled = 1) FROM annotations WHERE project_id = ? AND status = 'verified'",
            (project_id,),
        )[0]
        return row[0] or 0, row[1] or 0

    def human_results(self, project_id: int) -> dict[int, list]:
        """Each annotated task's latest verified, non-cancelled annotation result (the demonstrations)."""
        rows = self._q(
            "SELECT task_id, result, ls_updated, annotation_id FROM annotations WHERE project_id = ? AND status = 'verified' AND cancelled = 0 AND result IS NOT NULL",
            (project_id,),
        )
        latest: dict[int, tuple] = {}
        for task, result, updated, aid in rows:
            key = (updated or "", aid)
            if task not in latest or key > latest[task][0]:
                latest[task] = (key, result)
        return {t: json.loads(r) for t, (_, r) in latest.items()}

    def unread_annotations(self, project_id: int) -> list[int]:
        """Verified annotations whose content we have not read (after an upgrade from v1)."""
        return [
            r[0]
            for r in self._q(
                "SELECT annotation_id FROM annotations WHERE project_id = ? AND status = 'verified' AND result IS NULL",
                (project_id,),
            )
        ]

    # --- predictions -----------------------------------------------------------------------------
    def predictions(
        self, project_id: int, task_ids: Iterable[int] | None = None
    ) -> dict[int, Prediction]:
        rows = self._q(f"SELECT {_PRED_COLS} FROM predictions WHERE project_id = ?", (project_id,))
        out = {r[0]: _prediction(r) for r in rows}
        if task_ids is not None:
            wanted = set(task_ids)
            out = {t: p for t, p in out.items() if t in wanted}
        return out

    def predicted_task_ids(self, project_id: int) -> set[int]:
        """Tasks with a row of ours (queued, pre-annotated, or failed)."""
        return {
            r[0]
            for r in self._q("SELECT task_id FROM predictions WHERE project_id = ?", (project_id,))
        }

    def queue(self, project_id: int) -> list[Prediction]:
        """The ALLabel order: queued tasks by position."""
        rows = self._q(
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
            _refresh_want(
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

    def close(self) -> None:
        with self._lock:
            self._db.close()
