"""One similarity per corpus, shared by planning, re-planning and pre-annotation.

``SimilarityCache.get(texts, kind, model)`` returns the same object for the same texts (and
kind/model) while it is in memory - so the BM25 index built for the plan, and the row maxima its
scan filled in, serve the pre-annotation's retrieval without another N x N pass. With a
``directory`` it also keeps on disk what outlives the process: the row maxima (keyed by a hash
of the whole corpus and the similarity's definition; ``save`` after a scan) and, for SBERT, the
embeddings of every text (``embeddings.EmbeddingCache``, keyed by text and model, so a re-plan
after new tasks arrive embeds only the new ones).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alllabel.selection.embeddings import EmbeddingCache
from alllabel.selection.similarity import SIMILARITY_VERSION, Similarity, make_similarity

log = logging.getLogger(__name__)


def corpus_key(texts: Sequence[str], kind: str, model: str | None = None) -> str:
    h = hashlib.sha256(
        f"{SIMILARITY_VERSION}\0{kind.lower()}\0{model or ''}\0{len(texts)}\0".encode()
    )
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    return h.hexdigest()


class SimilarityCache:
    def __init__(self, directory: str | Path | None = None, *, keep: int = 2):
        self.directory = Path(directory) if directory else None
        self.keep = keep
        self.embeddings = (
            EmbeddingCache(self.directory / "embeddings.sqlite3") if self.directory else None
        )
        self._mem: OrderedDict[str, Similarity] = OrderedDict()
        self._lock = threading.Lock()

    def _rowmax_path(self, key: str) -> Path | None:
        return self.directory / f"rowmax-{key[:32]}.npy" if self.directory else None

    def get(
        self, texts: Sequence[str], kind: str = "bm25", *, model: str | None = None
    ) -> Similarity:
        key = corpus_key(texts, kind, model)
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
        sim = make_similarity(texts, kind, model=model, embeddings=self.embeddings)
        sim.cache_key = key
        path = self._rowmax_path(key)
        rowmax = getattr(sim, "_rowmax", None)
        if path is not None and rowmax is not None and path.exists():
            stored = np.load(path)
            if stored.shape == rowmax.shape:
                rowmax[:] = stored
        with self._lock:
            self._mem[key] = sim
            while len(self._mem) > self.keep:
                self._mem.popitem(last=False)
        return sim

    def save(self, sim: Similarity) -> None:
        """Persist what a scan learned (row maxima), if this cache has a directory."""
        key = getattr(sim, "cache_key", None)
        rowmax = getattr(sim, "_rowmax", None)
        path = self._rowmax_path(key) if key else None
        if path is None or rowmax is None or np.isnan(rowmax).all():
            return
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, rowmax)
        tmp.replace(path)
