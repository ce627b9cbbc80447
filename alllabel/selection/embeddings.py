"""Sentence embeddings cached on disk, so each text is embedded once per model.

Planning, re-planning (after new tasks arrive) and pre-annotation all need the same SBERT
embeddings; at ~50 ms a text on CPU, embedding a 5,000-task project costs minutes each time.
``EmbeddingCache`` keeps them in SQLite keyed by (model, SHA-256 of the text): a text is sent
to the model the first time it is seen and read back every later time, in any process.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """``embed(texts, model)`` = ``similarity.embed_texts`` with a SQLite cache at ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, text_sha256 BLOB NOT NULL, "
            "dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, text_sha256))"
        )
        self._db.commit()
        self.encoded = 0  # texts this cache has sent to a model (the expensive part)

    def embed(
        self, texts: Sequence[str], *, model: str | None = None, batch_size: int = 32
    ) -> np.ndarray:
        from alllabel.selection.similarity import default_sbert_model, embed_texts

        name = model or default_sbert_model()
        keys = [text_key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            uniq = list(dict.fromkeys(keys))
            for start in range(0, len(uniq), 500):
                chunk = uniq[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, dim, blob in self._db.execute(
                    f"SELECT text_sha256, dim, vector FROM embeddings WHERE model = ? AND text_sha256 IN ({marks})",
                    [name, *chunk],
                ):
                    found[bytes(key)] = np.frombuffer(blob, dtype=np.float32, count=dim)
        missing = {k: t for k, t in zip(keys, texts) if k not in found}
        if missing:
            vecs = np.asarray(
                embed_texts(list(missing.values()), model=model, batch_size=batch_size),
                dtype=np.float32,
            )
            with self._lock:
                self._db.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                    [(name, k, v.shape[0], v.tobytes()) for k, v in zip(missing, vecs)],
                )
                self._db.commit()
                self.encoded += len(missing)
            found.update(zip(missing, vecs))
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    def close(self) -> None:
        self._db.close()
