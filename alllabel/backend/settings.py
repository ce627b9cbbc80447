"""Backend settings, all from environment variables (see the README's configuration table)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from alllabel import env
from alllabel.backend.security import check_credentials
from alllabel.selection.stages import STAGE_ORDERS


def parse_budget(value: str | int | float) -> int | float:
    """``"50"`` -> 50 tasks; ``"0.05"`` or ``"5%"`` -> that fraction of the project's tasks."""
    s = str(value).strip()
    try:
        if s.endswith("%"):
            frac = float(s[:-1]) / 100
        elif "." in s:
            frac = float(s)
        else:
            n = int(s)
            if n < 1:
                raise ValueError
            return n
    except ValueError:
        raise ValueError(
            f"ALLABEL_BUDGET must be a task count (e.g. 50) or a fraction (0.05 or 5%), got {value!r}"
        ) from None
    if not 0 < frac <= 1:
        raise ValueError(f"ALLABEL_BUDGET as a fraction must be in (0, 1], got {value!r}")
    return frac


def resolve_budget(budget: int | float, n_tasks: int) -> int:
    """The number of tasks humans should annotate: at least 1, at most every task."""
    m = budget if isinstance(budget, int) else round(budget * n_tasks)
    return max(1, min(n_tasks, m))


def parse_ratios(value: str) -> tuple[float, float, float]:
    parts = value.replace(",", ":").split(":")
    try:
        r = tuple(float(p) for p in parts)
    except ValueError:
        r = ()
    if len(r) != 3:
        raise ValueError(
            f"ALLABEL_RATIOS must look like 1:3:1 (diversity:similarity:uncertainty), got {value!r}"
        )
    return r  # type: ignore[return-value]


@dataclass
class Settings:
    model_version: str = "alllabel"
    state_dir: Path = Path("data/state")
    budget: int | float = 0.05
    k: int = 3
    ratios: tuple[float, float, float] = (1, 3, 1)
    order: str = "DSU"
    similarity: str = "bm25"
    sbert_model: str | None = None
    annotator: str = "auto"  # auto | llm | projection
    push_batch: int = 100
    label_descriptions: dict[str, str] = field(default_factory=dict)
    prompt_role: str | None = None
    prompt_task: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    # The URL Label Studio reaches this backend at (recognises a model connected under another title).
    backend_url: str | None = None
    # Request bodies above this many MiB get 413 (see the README's threat model for the size).
    max_body_mb: float = 64.0
    # Seconds between idle checks of each project (one cheap request).
    sync_interval: float = 30.0
    # Next ALLabel picks kept queued beyond the budget (no random task at hand-overs).
    queue_reserve: int = 5
    # A computed pre-annotation reaches Label Studio within this many seconds.
    push_delay: float = 2.0
    max_backoff: float = 30.0  # longest wait before retrying after Label Studio failed
    llm_max_backoff: float = 600.0  # longest wait before retrying pre-annotations that failed
    # The first /setup of a project waits this long for its queue (Label Studio allows 3 s).
    connect_wait: float = 2.5
    # A new backend waits this long for a previous one on the same state to exit.
    lock_wait: float = 60.0
    # Which tasks humans are offered (selection/screening.py); paper_exact turns both rules off.
    exclude_duplicates: bool = True
    duplicate_threshold: float = 0.8
    exclude_outliers: bool = True
    outlier_factor: float = 4.0
    # A near-duplicate of an annotated task gets its annotation carried over, no LLM.
    project_duplicates: bool = True
    dask_scheduler: str | None = None
    # The bulk run (backend/bulk.py).
    prelabel_start: str = "auto"  # auto | manual (waits for Start Training)
    quality_check: bool = True
    min_f1: float | None = None
    # Live accuracy (backend/live.py): a version this far below, over this many reviewed tasks, holds.
    min_live_f1: float | None = None
    min_live_tasks: int = 5
    max_cost_usd: float | None = None
    min_span_score: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Every setting from its variable (see the README's table); a value that does not parse
        is an error naming the variable (``alllabel.env``)."""
        e = os.environ if environ is None else environ
        paper_exact = env.flag("ALLABEL_PAPER_EXACT", False, e)
        check_credentials(
            env.text("BASIC_AUTH_USER", None, e), env.text("BASIC_AUTH_PASS", None, e)
        )
        return cls(
            model_version=env.text("ALLABEL_MODEL_VERSION", "alllabel", e),
            state_dir=Path(env.text("ALLABEL_STATE_DIR", "data/state", e)),
            budget=parse_budget(env.text("ALLABEL_BUDGET", "5%", e)),
            k=env.number("ALLABEL_K", 3, e, minimum=1, integer=True),
            ratios=parse_ratios(env.text("ALLABEL_RATIOS", "1:3:1", e)),
            order=env.choice("ALLABEL_ORDER", [o.lower() for o in STAGE_ORDERS], "dsu", e).upper(),
            similarity=env.choice("ALLABEL_SIMILARITY", ("bm25", "sbert"), "bm25", e),
            sbert_model=env.text("ALLABEL_SBERT_MODEL", None, e),
            annotator=env.choice("ALLABEL_ANNOTATOR", ("auto", "llm", "projection"), "auto", e),
            push_batch=env.number("ALLABEL_PUSH_BATCH", 100, e, minimum=1, integer=True),
            label_descriptions=_descriptions(env.text("ALLABEL_LABEL_DESCRIPTIONS", None, e)),
            prompt_role=env.text("ALLABEL_PROMPT_ROLE", None, e),
            prompt_task=env.text("ALLABEL_PROMPT_TASK", None, e),
            basic_auth_user=env.text("BASIC_AUTH_USER", None, e),
            basic_auth_pass=env.text("BASIC_AUTH_PASS", None, e),
            backend_url=env.text("ALLABEL_BACKEND_URL", None, e),
            max_body_mb=env.number("ALLABEL_MAX_BODY_MB", 64.0, e, above=0, unit=" (MiB)"),
            sync_interval=env.number("ALLABEL_SYNC_INTERVAL", 30.0, e, above=0, unit=" (seconds)"),
            queue_reserve=env.number("ALLABEL_QUEUE_RESERVE", 5, e, minimum=0, integer=True),
            push_delay=env.number("ALLABEL_PUSH_DELAY", 2.0, e, above=0, unit=" (seconds)"),
            max_backoff=env.number("ALLABEL_MAX_BACKOFF", 30.0, e, above=0, unit=" (seconds)"),
            llm_max_backoff=env.number(
                "ALLABEL_LLM_MAX_BACKOFF", 600.0, e, above=0, unit=" (seconds)"
            ),
            exclude_duplicates=not paper_exact and env.flag("ALLABEL_EXCLUDE_DUPLICATES", True, e),
            duplicate_threshold=env.fraction("ALLABEL_DUPLICATE_THRESHOLD", 0.8, e),
            exclude_outliers=not paper_exact and env.flag("ALLABEL_EXCLUDE_OUTLIERS", True, e),
            outlier_factor=env.number("ALLABEL_OUTLIER_FACTOR", 4.0, e, above=0),
            project_duplicates=env.flag("ALLABEL_PROJECT_DUPLICATES", True, e),
            dask_scheduler=env.text("ALLABEL_DASK_SCHEDULER", None, e),
            prelabel_start=env.choice("ALLABEL_PRELABEL_START", ("auto", "manual"), "auto", e),
            quality_check=env.flag("ALLABEL_QUALITY_CHECK", True, e),
            min_f1=env.fraction("ALLABEL_MIN_F1", None, e),
            min_live_f1=env.fraction("ALLABEL_MIN_LIVE_F1", None, e),
            min_live_tasks=env.number("ALLABEL_MIN_LIVE_TASKS", 5, e, minimum=1, integer=True),
            max_cost_usd=env.number("ALLABEL_MAX_COST_USD", None, e, minimum=0, unit=" (US$)"),
            min_span_score=env.fraction("ALLABEL_MIN_SPAN_SCORE", None, e),
        )


def _descriptions(path: str | None) -> dict[str, str]:
    """ALLABEL_LABEL_DESCRIPTIONS: a JSON file {label: definition}."""
    if path is None:
        return {}
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise env.SettingError(
            f"ALLABEL_LABEL_DESCRIPTIONS must name a JSON file {{label: description}}: {e}"
        ) from None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise env.SettingError(
            f"ALLABEL_LABEL_DESCRIPTIONS: {path} must hold one JSON object {{label: description}}"
        )
    return found
