"""Answers and what they cost: ``Completion``, the client's ``Usage``, and the SQLite ``LLMCache``."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from alllabel.llm.config import token_cost


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[tuple[str, float]] | None = None
    cached: bool = False
    price_factor: float = 1.0  # 0.5 for answers bought through the Batch API
    retries: int = field(
        default=0, compare=False
    )  # the client's retries for this call (not stored)
    parsed: object = field(
        default=None, compare=False, repr=False
    )  # what ``validate`` returned (not stored)
    # What the endpoint billed for this call, every attempt included (0 for a cached answer).
    billed_usd: float = field(default=0.0, compare=False)
    # The tokens are our estimate: a stream without the server's usage (not stored).
    estimated: bool = field(default=False, compare=False)

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        c = token_cost(self.prompt_tokens, self.completion_tokens, prices)
        return None if c is None else c * self.price_factor


@dataclass
class Usage:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_calls: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    batch_price_factor: float = 0.5
    billed_usd: float = 0.0  # every attempt the endpoint billed (``alllabel.llm.billing``)
    call_seconds: float = 0.0  # wall time of the answered calls (latency = this / calls)
    # Calls (answered or not) whose tokens are estimated: streams the server gave no usage for
    # (the prompt as counted, one token per streamed piece).
    tokens_estimated: int = 0
    loops_cut: int = 0  # replies cut while streaming because they repeated themselves
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        online = token_cost(self.prompt_tokens, self.completion_tokens, prices)
        batch = token_cost(self.batch_prompt_tokens, self.batch_completion_tokens, prices)
        return None if online is None else online + self.batch_price_factor * batch

    def as_dict(self, prices=None) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not f.name.startswith("_") and f.name != "batch_price_factor"
        }
        d["cost_usd"] = self.cost(prices)
        return d


_SPEND_TABLE = "CREATE TABLE IF NOT EXISTS spend (run_key TEXT PRIMARY KEY, usd REAL NOT NULL)"
# Why failed calls used a run key's cap up, so a later run held at the cap says it too.
_CAUSE_TABLE = (
    "CREATE TABLE IF NOT EXISTS spend_cause (run_key TEXT PRIMARY KEY, cause TEXT NOT NULL)"
)
_FORMAT_TABLE = (
    "CREATE TABLE IF NOT EXISTS formats (endpoint TEXT NOT NULL, model TEXT NOT NULL, "
    "format TEXT NOT NULL, PRIMARY KEY (endpoint, model))"
)


class LLMCache:
    """SQLite cache of successful completions, keyed on model, messages and parameters.

    The same database keeps the Batch API's bookkeeping (``alllabel.llm.batch``) and the command
    line's spend per run key (``spent``/``add_spent``) and the response_format each endpoint and
    model was found to take (``known_format``/``remember_format``)."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash (not a power cut) without an fsync each.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.commit()
        self._lock = threading.Lock()
        self._has_spend_table = False

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        d["logprobs"] = [tuple(x) for x in d["logprobs"]] if d.get("logprobs") is not None else None
        return Completion(**{**d, "cached": True})

    def put(self, key: str, c: Completion) -> None:
        value = {
            "text": c.text,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "logprobs": c.logprobs,
        }
        if c.price_factor != 1.0:
            value["price_factor"] = c.price_factor
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions VALUES (?, ?, ?)",
                (key, json.dumps(value), time.time()),
            )
            self._db.commit()

    def execute(self, sql: str, params: tuple = (), *, many: bool = False) -> list[tuple]:
        """Run one statement and commit (the batch bookkeeping's access)."""
        with self._lock:
            cur = self._db.executemany(sql, params) if many else self._db.execute(sql, params)
            rows = cur.fetchall()
            self._db.commit()
        return rows

    def spent(self, run_key: str) -> float:
        """US$ billed so far for ``run_key`` (the command line's spend ledger, ``add_spent``)."""
        self._spend_table()
        rows = self.execute("SELECT usd FROM spend WHERE run_key = ?", (run_key,))
        return rows[0][0] if rows else 0.0

    def _spend_table(self) -> None:
        # Once per cache: ``add_spent`` runs at every billed call, one commit is enough there.
        if not self._has_spend_table:
            self.execute(_SPEND_TABLE)
            self._has_spend_table = True

    def add_spent(self, run_key: str, usd: float) -> None:
        self._spend_table()
        self.execute(
            "INSERT INTO spend VALUES (?, ?) ON CONFLICT(run_key) DO UPDATE SET usd = usd + ?",
            (run_key, usd, usd),
        )

    def spend_cause(self, run_key: str) -> str | None:
        """The failure an earlier run of ``run_key`` spent its cap on (``note_spend_cause``)."""
        self.execute(_CAUSE_TABLE)
        rows = self.execute("SELECT cause FROM spend_cause WHERE run_key = ?", (run_key,))
        return rows[0][0] if rows else None

    def note_spend_cause(self, run_key: str, cause: str) -> None:
        self.execute(_CAUSE_TABLE)
        self.execute("INSERT OR REPLACE INTO spend_cause VALUES (?, ?)", (run_key, cause))

    def known_format(self, endpoint: str, model: str) -> str | None:
        """The response_format ``endpoint`` took for ``model`` after a refusal, in an earlier run."""
        self.execute(_FORMAT_TABLE)
        rows = self.execute(
            "SELECT format FROM formats WHERE endpoint = ? AND model = ?", (endpoint, model)
        )
        return rows[0][0] if rows else None

    def remember_format(self, endpoint: str, model: str, fmt: str) -> None:
        self.execute(_FORMAT_TABLE)
        self.execute("INSERT OR REPLACE INTO formats VALUES (?, ?, ?)", (endpoint, model, fmt))

    def close(self) -> None:
        with self._lock:
            self._db.close()
