"""The state file's schema, its version, and the migrations from older versions."""

from __future__ import annotations

import json
import sqlite3
import time

from alllabel.backend.ls_format import desired_digest, digest

SCHEMA_VERSION = 3

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
    parent_prediction INTEGER,     -- the Label Studio prediction the annotator started from
    ours          TEXT,            -- that prediction's result, when it was our pre-annotation
    ours_version  TEXT,            -- and its version (what produced it)
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


def script(db: sqlite3.Connection, sql: str) -> None:
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
    script(db, SCHEMA)
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
    refresh_want(db, "1 = 1", ())


def refresh_want(db: sqlite3.Connection, where: str, args: tuple) -> None:
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


REVIEW_COLUMNS = {"parent_prediction": "INTEGER", "ours": "TEXT", "ours_version": "TEXT"}


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Annotations remember the pre-annotation they corrected (live accuracy)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(annotations)")}
    for name, kind in REVIEW_COLUMNS.items():
        if name not in have:  # a v1 file got them with the v2 tables
            db.execute(f"ALTER TABLE annotations ADD COLUMN {name} {kind}")


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3}  # from version -> function upgrading to version + 1
