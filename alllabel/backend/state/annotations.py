"""Human annotations: facts read from Label Studio at a clock value, and webhook claims."""

from __future__ import annotations

import json
from collections.abc import Iterable


class AnnotationRows:
    # The connection, ``_q``, ``_many`` and ``_transaction`` come from ``store.State``.

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
        """A fact read from Label Studio at clock ``seq``: the annotation exists as given. One started
        from our pre-annotation (``parent_prediction``) keeps a copy of it (live accuracy)."""
        parent, task = annotation.get("parent_prediction"), annotation["task"]
        ours = (
            self._q(
                "SELECT result, version FROM predictions WHERE project_id = ? AND task_id = ? AND ls_id = ? "
                "AND result IS NOT NULL",
                (project_id, task, parent),
            )
            if parent is not None
            else []
        )
        self._q(
            "INSERT INTO annotations (project_id, annotation_id, task_id, status, cancelled, result, ls_updated, seq, "
            "parent_prediction, ours, ours_version) VALUES (?, ?, ?, 'verified', ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(project_id, annotation_id) DO UPDATE SET "
            "task_id = excluded.task_id, status = 'verified', pending = 0, cancelled = excluded.cancelled, result = excluded.result, "
            "ls_updated = excluded.ls_updated, seq = excluded.seq, checks = 0, "
            "parent_prediction = excluded.parent_prediction, "
            # Our prediction may be replaced later: the copy taken first stays.
            "ours = COALESCE(annotations.ours, excluded.ours), "
            "ours_version = COALESCE(annotations.ours_version, excluded.ours_version) "
            "WHERE annotations.seq <= excluded.seq",
            (
                project_id,
                annotation["id"],
                task,
                int(bool(annotation.get("was_cancelled"))),
                json.dumps(annotation.get("result") or [], ensure_ascii=False),
                annotation.get("updated_at"),
                seq,
                parent,
                *(ours[0] if ours else (None, None)),
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

    def first_annotated(self, project_id: int) -> dict[int, str | None]:
        """Each annotated task's earliest verified, non-cancelled annotation time (Label Studio's
        ``updated_at``): whether it was made before the ALLabel order was in Label Studio."""
        rows = self._q(
            "SELECT task_id, MIN(ls_updated) FROM annotations WHERE project_id = ? "
            "AND status = 'verified' AND cancelled = 0 GROUP BY task_id",
            (project_id,),
        )
        return {t: u for t, u in rows}

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

    def reviewed(self, project_id: int) -> dict[int, tuple[list, dict, list]]:
        """Tasks whose latest verified annotation started from our pre-annotation:
        task -> (our result, its version, the human result)."""
        rows = self._q(
            "SELECT task_id, ours, ours_version, result, ls_updated, annotation_id FROM annotations "
            "WHERE project_id = ? AND status = 'verified' AND cancelled = 0 AND result IS NOT NULL",
            (project_id,),
        )
        latest: dict[int, tuple] = {}
        for task, ours, version, result, updated, aid in rows:
            key = (updated or "", aid)
            if task not in latest or key > latest[task][0]:
                latest[task] = (key, ours, version, result)
        return {
            t: (json.loads(o), json.loads(v or "{}"), json.loads(r))
            for t, (_, o, v, r) in latest.items()
            if o is not None
        }

    def unread_annotations(self, project_id: int) -> list[int]:
        """Verified annotations whose content we have not read (after an upgrade from v1)."""
        return [
            r[0]
            for r in self._q(
                "SELECT annotation_id FROM annotations WHERE project_id = ? AND status = 'verified' AND result IS NULL",
                (project_id,),
            )
        ]
