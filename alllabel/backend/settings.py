"""Backend settings, all from environment variables (see the README's configuration table)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from alllabel.backend.security import check_credentials


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


def _flag(env, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0, got {raw!r}")


def _fraction(env, name: str, default: float | None) -> float | None:
    """A number in [0, 1], written 0.6 or 60%."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw[:-1]) / 100 if raw.strip().endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1] (0.6 or 60%), got {raw!r}")
    return value


def _positive(env, name: str, default: float, zero_ok: bool = False) -> float:
    raw = env.get(name)
    try:
        value = float(raw) if raw not in (None, "") else float(default)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(
            f"{name} must be a {'non-negative' if zero_ok else 'positive'} number of seconds or tasks, got {raw!r}"
        )
    return value


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
    # Request bodies above this many MiB get 413 (see the README's threat model for the size).
    max_body_mb: float = 64.0
    sync_interval: float = 30.0  # seconds between idle checks of each project (one cheap request)
    queue_reserve: int = (
        5  # next ALLabel picks kept queued beyond the budget (no random task at hand-overs)
    )
    push_delay: float = (
        2.0  # a computed pre-annotation reaches Label Studio within this many seconds
    )
    max_backoff: float = 30.0  # longest wait before retrying after Label Studio failed
    llm_max_backoff: float = 600.0  # longest wait before retrying pre-annotations that failed
    connect_wait: float = (
        2.5  # the first /setup of a project waits this long for its queue (LS allows 3 s)
    )
    lock_wait: float = (
        60.0  # a new backend waits this long for a previous one on the same state to exit
    )
    # Which tasks humans are offered (alllabel/screening.py); paper_exact turns both rules off.
    exclude_duplicates: bool = True
    duplicate_threshold: float = 0.8
    exclude_outliers: bool = True
    outlier_factor: float = 4.0
    project_duplicates: bool = (
        True  # a near-duplicate of an annotated task gets its annotation, no LLM
    )
    dask_scheduler: str | None = None
    # The bulk run (alllabel/bulk.py).
    prelabel_start: str = "auto"  # auto | manual (waits for Start Training)
    quality_check: bool = True
    min_f1: float | None = None
    max_cost_usd: float | None = None
    min_span_score: float | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        descriptions = {}
        if env.get("ALLABEL_LABEL_DESCRIPTIONS"):
            path = Path(env["ALLABEL_LABEL_DESCRIPTIONS"])
            try:
                descriptions = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(
                    f"ALLABEL_LABEL_DESCRIPTIONS must name a JSON file {{label: description}}: {e}"
                ) from None
        start = env.get("ALLABEL_PRELABEL_START", "auto")
        if start not in ("auto", "manual"):
            raise ValueError(f"ALLABEL_PRELABEL_START must be auto or manual, got {start!r}")
        paper_exact = _flag(env, "ALLABEL_PAPER_EXACT", False)
        annotator = env.get("ALLABEL_ANNOTATOR", "auto")
        check_credentials(env.get("BASIC_AUTH_USER"), env.get("BASIC_AUTH_PASS"))
        if annotator not in ("auto", "llm", "projection"):
            raise ValueError(
                f"ALLABEL_ANNOTATOR must be auto, llm or projection, got {annotator!r}"
            )
        return cls(
            model_version=env.get("ALLABEL_MODEL_VERSION", "alllabel"),
            state_dir=Path(env.get("ALLABEL_STATE_DIR", "data/state")),
            budget=parse_budget(env.get("ALLABEL_BUDGET", "5%")),
            k=int(env.get("ALLABEL_K", 3)),
            ratios=parse_ratios(env.get("ALLABEL_RATIOS", "1:3:1")),
            order=env.get("ALLABEL_ORDER", "DSU"),
            similarity=env.get("ALLABEL_SIMILARITY", "bm25"),
            sbert_model=env.get("ALLABEL_SBERT_MODEL") or None,
            annotator=annotator,
            push_batch=int(env.get("ALLABEL_PUSH_BATCH", 100)),
            label_descriptions=descriptions,
            prompt_role=env.get("ALLABEL_PROMPT_ROLE") or None,
            prompt_task=env.get("ALLABEL_PROMPT_TASK") or None,
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            max_body_mb=_positive(env, "ALLABEL_MAX_BODY_MB", 64),
            sync_interval=_positive(env, "ALLABEL_SYNC_INTERVAL", 30),
            queue_reserve=int(_positive(env, "ALLABEL_QUEUE_RESERVE", 5, zero_ok=True)),
            push_delay=_positive(env, "ALLABEL_PUSH_DELAY", 2),
            max_backoff=_positive(env, "ALLABEL_MAX_BACKOFF", 30),
            llm_max_backoff=_positive(env, "ALLABEL_LLM_MAX_BACKOFF", 600),
            exclude_duplicates=not paper_exact and _flag(env, "ALLABEL_EXCLUDE_DUPLICATES", True),
            duplicate_threshold=_fraction(env, "ALLABEL_DUPLICATE_THRESHOLD", 0.8),
            exclude_outliers=not paper_exact and _flag(env, "ALLABEL_EXCLUDE_OUTLIERS", True),
            outlier_factor=_positive(env, "ALLABEL_OUTLIER_FACTOR", 4),
            project_duplicates=_flag(env, "ALLABEL_PROJECT_DUPLICATES", True),
            dask_scheduler=env.get("ALLABEL_DASK_SCHEDULER") or None,
            prelabel_start=start,
            quality_check=_flag(env, "ALLABEL_QUALITY_CHECK", True),
            min_f1=_fraction(env, "ALLABEL_MIN_F1", None),
            max_cost_usd=_positive(env, "ALLABEL_MAX_COST_USD", None, zero_ok=True)
            if env.get("ALLABEL_MAX_COST_USD")
            else None,
            min_span_score=_fraction(env, "ALLABEL_MIN_SPAN_SCORE", None),
        )
