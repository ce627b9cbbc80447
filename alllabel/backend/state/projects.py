"""Projects (one row each: phase, budget, settings we applied, spend) and their tasks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable


class ProjectRows:
    # The connection, ``_q``, ``_many`` and ``_transaction`` come from ``store.State``.

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
        rows = self._rows(
            f"SELECT {', '.join(self._PROJECT_FIELDS)} FROM projects WHERE project_id = ?",
            (project_id,),
        )
        if not rows:
            return None
        p = dict(rows[0])  # by column name
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
