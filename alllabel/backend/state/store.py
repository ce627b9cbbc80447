"""The state file: its connection, transactions, the clock, and the tables' methods together."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from alllabel.backend.state.annotations import AnnotationRows
from alllabel.backend.state.predictions import PredictionRows
from alllabel.backend.state.projects import ProjectRows
from alllabel.backend.state.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, script


class State(ProjectRows, AnnotationRows, PredictionRows):
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.sqlite3"
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row  # rows are read by column name
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
                script(db, SCHEMA)
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
        """Plain tuples, for small results read by position where they are made."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(sql, args).fetchall()]

    def _rows(self, sql: str, args=()) -> list[sqlite3.Row]:
        """Rows read by column name (``row["task_id"]``): table rows turned into records."""
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

    def close(self) -> None:
        with self._lock:
            self._db.close()
