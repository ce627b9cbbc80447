"""Incremental re-plans: the scan's statistics kept between plans and updated per change.

``Planner`` holds what the stages need from U - every row's top list (with its values), for
BM25 the exact row sums on the integer grid - and keeps it equal, bit for bit, to what a full
scan of the current corpus would give, so ``select`` returns the same picks as
``stages.select`` on the same data:

* new annotations change no statistic; a row whose list holds too few unchosen items for the
  similarity stage is recomputed alone (its row of U), never the corpus;
* with a similarity whose scores do not depend on the corpus (SBERT cosine), ``add`` computes
  the new rows once and merges their cells into the old lists (``merge``), ``remove`` drops
  the removed items from the lists: time proportional to (change) x N. SBERT keeps no row
  sums: the core-set seed comes from linear sums (``rowsums.seed``), as in the full scan, so
  N crossing a power of two (the sums' grid) costs nothing;
* BM25 cannot be updated exactly: idf and avgdl depend on N and the document lengths, so one new
  text changes every weight, every score and every row maximum. ``add``/``remove`` then rebuild
  and rescan (``last_rescan`` says why).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np

from alllabel.selection.blocks import BlockRunner, LocalRunner
from alllabel.selection.engine import BUFFERS, Engine, _buffer
from alllabel.selection.kernels import rank_rows, scan_rows
from alllabel.selection.merge import grow_block, merge, thresholds
from alllabel.selection.similarity import (
    BM25Similarity,
    SBERTSimilarity,
    Similarity,
    default_block_rows,
)
from alllabel.selection.stages import (
    STAGE_NAMES,
    STAGE_ORDERS,
    Selection,
    _run,
    _validate,
    stage_sizes,
)

log = logging.getLogger(__name__)


def _grid(sim: Similarity) -> float:
    bound = max(float(getattr(sim, "bound", 1.0)), 1e-300) * sim.n
    return 2.0 ** min(100, math.floor(62 - math.log2(bound)))


def _sbert_like(sim: SBERTSimilarity, embeddings: np.ndarray, quantised: np.ndarray):
    """``sim`` with other rows (appended or removed): the same bits as a build from scratch,
    since each vector is normalised and quantised on its own."""
    out = copy.copy(sim)
    out.n, out.embeddings, out._e = len(embeddings), embeddings, quantised
    out._rowmax = np.full(out.n, np.nan)
    return out


def _plan_block(sim, idx, excluded, grid, width):
    """One block of rows: top lists with values, and grid sums unless ``grid`` is None (module
    level: Dask can run it)."""
    n = sim.n
    block = sim.rows(idx, out=_buffer("rows", (len(idx), n), np.float64))
    lists = np.empty((len(idx), width), dtype=np.int32)
    vals = np.empty((len(idx), width))
    sums = None if grid is None else np.empty(len(idx), dtype=np.int64)
    if grid is None:
        rank_rows(block, idx, excluded, width, n, lists, vals, np.empty(len(idx)), False)
    else:
        scan_rows(
            block, idx, excluded, grid, width, n, lists, vals, sums, np.empty(len(idx)), False
        )
    rowmax = getattr(sim, "_rowmax", None)
    return lists, vals, sums, None if rowmax is None else rowmax[idx].copy()


class Planner:
    """A project's selection state: ``add(texts)``, ``remove(indices)``, ``select(budget, ...)``.

    ``kind`` is ``bm25`` or ``sbert`` (``embeddings``: the texts' vectors, else the model
    embeds them). ``width`` is the list width kept (default: what ``budget`` needs plus
    ``slack``, room for later annotations and deletions). ``exclude`` as in ``stages.select``.
    """

    def __init__(
        self,
        texts: Sequence[str],
        *,
        kind: str = "bm25",
        embeddings=None,
        budget: int = 1000,
        k: int = 3,
        ratios: Sequence[float] = (1, 3, 1),
        order: str = "DSU",
        exclude: Iterable[int] | None = None,
        slack: int = 64,
        block_rows: int | None = None,
        runner: BlockRunner | None = None,
        column_cache_mib: int = 256,
    ):
        if kind not in ("bm25", "sbert"):
            raise ValueError(f"unknown similarity {kind!r}; use 'bm25' or 'sbert'")
        self.kind, self.k, self.ratios, self.order = kind, int(k), tuple(ratios), order
        self.texts = list(texts)
        self.vectors = None if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        self.block_rows, self.runner = block_rows, runner or LocalRunner()
        self.slack = slack
        # SBERT: the diversity stage's columns of U, kept for the next plan (item -> column;
        # extended by add, cut by remove); they cost N x 8 bytes each, at most this many MiB.
        self.columns: dict[int, np.ndarray] = {}
        self.column_cache_mib = column_cache_mib
        self._spare: dict[str, np.ndarray] = {}  # buffers with room for added rows (_append)
        self.rankable = np.ones(len(self.texts), dtype=bool)
        if exclude is not None:
            self.rankable[np.asarray(list(exclude), dtype=np.int64)] = False
        self.width = self._need(budget, 0) + slack
        self.last_rescan: str | None = None
        self._build()
        self._rescan("first plan")

    # --- state ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.texts)

    def _append(self, name: str, a: np.ndarray, new: np.ndarray | int) -> np.ndarray:
        """``a`` with rows appended (``new``, or that many unset), in its buffer's spare rows
        when there is room: an add does not copy the N kept rows (arrays of up to a GB at 100k).
        A new buffer gets a sixteenth more rows than needed."""
        extra = new if isinstance(new, int) else len(new)
        n, buf = len(a), self._spare.get(name)
        if buf is None or a.base is not buf or len(buf) < n + extra or buf.dtype != a.dtype:
            buf = np.empty((n + extra + max(extra, (n + extra) // 16),) + a.shape[1:], a.dtype)
            buf[:n] = a
            self._spare[name] = buf
        out = buf[: n + extra]
        if not isinstance(new, int):
            out[n:] = new
        return out

    def _build(self) -> None:
        if self.kind == "bm25":
            self.sim: Similarity = BM25Similarity(self.texts)
        else:
            self.sim = SBERTSimilarity(self.texts, embeddings=self.vectors)
            if self.vectors is None:
                self.vectors = self.sim.embeddings.copy()
            self.vectors = self._append("vectors", self.vectors, 0)  # room for adds
            self.sim.embeddings = self._append("embeddings", self.sim.embeddings, 0)
            self.sim._e = self._append("quantised", self.sim._e, 0)

    def _need(self, budget: int, n_pre: int) -> int:
        """List entries per row the stages read: the similarity stage's (its depth plus what is
        chosen before it) and the uncertainty stage's weak queries' (likewise): kept that wide,
        neither stage recomputes rows of U (200 rows and their exact depths at 100k)."""
        sizes = stage_sizes(budget, self.ratios)
        key = str(self.order).upper().replace("-", "")

        def before(stage: str) -> int:
            return n_pre + sum(sizes[STAGE_NAMES[c]] for c in key[: key.index(stage)])

        need = max(self.k, sizes["similarity"]) + before("S") + 1
        if sizes["uncertainty"]:
            need = max(need, max(self.k, sizes["uncertainty"]) + before("U"))
        return need

    def _rows(self, rows: np.ndarray, width: int):
        """Top lists, their values and row sums of ``rows`` (a scan of those rows only), in
        blocks on the runner (threads: all cores; a rescan at 100k took twice a full select
        on one)."""
        n = self.n
        lists = np.empty((len(rows), width), dtype=np.int32)
        vals = np.empty((len(rows), width))
        sums = None if self.grid is None else np.empty(len(rows), dtype=np.int64)
        step = self.block_rows or default_block_rows(n)
        blocks = [rows[s : s + step] for s in range(0, len(rows), step)]
        excluded = np.flatnonzero(~self.rankable)
        pos = 0
        args = (excluded, self.grid, width)
        for idx, (b_lists, b_vals, b_sums, rowmax) in self.runner.map(
            _plan_block, self.sim, blocks, *args
        ):
            sl = slice(pos, pos + len(idx))
            lists[sl], vals[sl] = b_lists, b_vals
            if sums is not None:
                sums[sl] = b_sums
            if rowmax is not None:  # computed on a Dask worker: keep it here too
                self.sim._rowmax[idx] = rowmax
            pos += len(idx)
        BUFFERS.__dict__.clear()  # this thread's scratch block, when it ran one itself
        return lists, vals, sums

    def _complete(self, rows: np.ndarray) -> np.ndarray:
        """Rows whose list can hold their whole ranking (every other rankable item)."""
        others = int(self.rankable.sum()) - self.rankable[rows]
        return others <= self.width

    def _rescan(self, why: str) -> None:
        log.info("full rescan: %s", why)
        self.last_rescan = why
        self.columns = {}
        self.grid = _grid(self.sim) if self.kind == "bm25" else None  # SBERT: linear sums
        rows = np.arange(self.n)
        self.lists, self.vals, self.rowsum = self._rows(rows, self.width)
        self.complete = self._complete(rows)
        self.length = np.minimum(self.width, int(self.rankable.sum()) - self.rankable)
        for name in self._kept():
            setattr(self, name, self._append(name, getattr(self, name), 0))

    def _kept(self) -> tuple[str, ...]:
        """The per-row arrays, grown by ``add`` in their spare rows."""
        return ("lists", "vals", "length", "complete") + (
            ("rowsum",) if self.grid is not None else ()
        )

    # --- changes ----------------------------------------------------------------------------
    def add(self, texts: Sequence[str], embeddings=None, exclude: Iterable[int] = ()) -> None:
        """Append tasks (their indices follow the existing ones); ``exclude``: new-item offsets."""
        texts = list(texts)
        if not texts:
            return
        n0 = self.n
        self.texts += texts
        new_ok = np.ones(len(texts), dtype=bool)
        new_ok[np.asarray(list(exclude), dtype=np.int64)] = False
        self.rankable = np.concatenate([self.rankable, new_ok])
        if self.kind == "sbert":
            new = embeddings if embeddings is not None else SBERTSimilarity(texts).embeddings
            new = np.asarray(new, dtype=np.float64)
            self.vectors = self._append("vectors", self.vectors, new)
            # Vectors are normalised and quantised one by one: the new ones alone, appended.
            part = SBERTSimilarity(texts, embeddings=new)
            self.sim = _sbert_like(
                self.sim,
                self._append("embeddings", self.sim.embeddings, part.embeddings),
                self._append("quantised", self.sim._e, part._e),
            )
        else:
            self._build()
        if self.kind == "bm25":
            return self._rescan("BM25 idf/avgdl changed with the corpus: every score changed")
        self.last_rescan = None
        self._grow(n0)

    def _grow(self, n0: int) -> None:
        """New rows in blocks on the runner (``merge.grow_block``); their winners are merged
        into the old lists once, at the end (``merge``)."""
        n, w = self.n, self.width
        new = np.arange(n0, n)
        for name in self._kept():
            setattr(self, name, self._append(name, getattr(self, name), len(new)))
        was_complete = self.complete[:n0].copy()
        thr = thresholds(self.vals, self.length, was_complete, w)
        excluded = np.flatnonzero(~self.rankable)
        kept = np.array(sorted(self.columns), dtype=np.int64)
        cols = {j: np.concatenate([self.columns[j], np.empty(len(new))]) for j in kept.tolist()}
        step = self.block_rows or default_block_rows(n)
        blocks = [new[s : s + step] for s in range(0, len(new), step)]
        found = []
        args = (thr, self.rankable, excluded, w, kept)
        for idx, (lists, vals, won, cells) in self.runner.map(grow_block, self.sim, blocks, *args):
            self.lists[idx], self.vals[idx] = lists, vals
            for j, cell in zip(kept.tolist(), cells):
                cols[j][idx] = cell
            found.append(won)
        BUFFERS.__dict__.clear()
        merge(found, self.lists, self.vals, self.length[:n0])
        self.columns = cols
        self.complete[new] = self._complete(new)
        self.length[new] = np.minimum(w, int(self.rankable.sum()) - self.rankable[new])
        self.complete[:n0] = was_complete & self._complete(np.arange(n0))

    def remove(self, indices: Iterable[int]) -> None:
        """Delete tasks; the others keep their order (indices above a removed one shift down)."""
        gone = np.unique(np.asarray(list(indices), dtype=np.int64))
        if not len(gone):
            return
        keep = np.ones(self.n, dtype=bool)
        keep[gone] = False
        self.texts = [t for t, k in zip(self.texts, keep) if k]
        if self.kind == "sbert":
            self.vectors = self.vectors[keep]
        self.rankable = self.rankable[keep]
        if self.kind == "sbert":
            self.sim = _sbert_like(self.sim, self.sim.embeddings[keep], self.sim._e[keep])
        else:
            self._build()
        if self.kind == "bm25":
            return self._rescan("BM25 idf/avgdl changed with the corpus: every score changed")
        self.last_rescan = None
        self._shrink(keep)

    def _shrink(self, keep: np.ndarray) -> None:
        n_old = len(keep)
        remap = np.full(n_old + 1, -1, dtype=np.int64)
        remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
        lists, vals = self.lists[keep], self.vals[keep]
        length = self.length[keep]
        mapped = remap[np.where(lists < n_old, lists, n_old)]  # padding maps to -1 too
        valid = (mapped >= 0) & (np.arange(self.width)[None, :] < length[:, None])
        order = np.argsort(~valid, axis=1, kind="stable")  # survivors first, in ranking order
        self.lists = np.take_along_axis(mapped, order, axis=1).astype(np.int32)
        self.vals = np.take_along_axis(vals, order, axis=1)
        self.length = valid.sum(axis=1)
        self.complete = self.complete[keep]
        if self.rowsum is not None:
            self.rowsum = self.rowsum[keep]
        self.columns = {int(remap[j]): c[keep] for j, c in self.columns.items() if keep[j]}

    # --- planning ---------------------------------------------------------------------------
    def select(self, budget: int, *, pre_chosen: Iterable[int] = (), **kwargs) -> Selection:
        """The plan for the current corpus: identical to ``stages.select`` on the same data."""
        pre = [int(i) for i in pre_chosen]
        exclude = np.flatnonzero(~self.rankable)
        pre, rankable = _validate(self.n, budget, self.k, pre, exclude)
        if (rankable != self.rankable).any():  # a pre-chosen item was excluded: columns change
            self.rankable = rankable
            self._rescan("a pre-chosen item was excluded")
        n_rankable = int(self.rankable.sum())
        need = min(self._need(int(budget), len(pre)), n_rankable)
        if need > self.width:  # more annotations than the slack: wider arrays, same prefixes
            self._widen(need + self.slack)
        self._refresh(self._short_rows(pre, need, self._need(int(budget), 0), n_rankable))
        return self._select(int(budget), pre, need, **kwargs)

    def _short_rows(self, pre: list[int], need: int, need0: int, n_rankable: int) -> np.ndarray:
        """Rows whose known prefix may hold too few unchosen items for this plan.

        The engine reads ``need`` entries per row; a prefix of L items holding c pre-chosen
        ones still has L - c - n_D >= max(k, n_S) + 1 candidates when L >= need0 + c, so its
        picks are the same as with a full-width list. When ``need`` covers (nearly) every
        item, the engine takes a list of that width for the whole ranking: require it all.
        """
        if need >= n_rankable - 1:
            target = np.full(self.n, need)
        elif not pre:
            target = np.full(self.n, min(need0, need))
        else:
            in_pre = np.zeros(self.n + 1, dtype=bool)
            in_pre[pre] = True
            known = np.arange(self.width)[None, :] < self.length[:, None]
            c = (in_pre[np.where(known, self.lists, self.n)] & known).sum(axis=1)
            target = np.minimum(need0 + c, need)
        return np.flatnonzero((self.length < target) & ~self.complete)

    def _refresh(self, rows: np.ndarray) -> None:
        """Recompute these rows' lists at the current width (their rows of U only)."""
        if not len(rows):
            return
        self.lists[rows], self.vals[rows], sums = self._rows(rows, self.width)
        if sums is not None:
            self.rowsum[rows] = sums
        others = int(self.rankable.sum()) - self.rankable[rows]
        self.length[rows] = np.minimum(self.width, others)
        self.complete[rows] = self._complete(rows)

    def _widen(self, width: int) -> None:
        pad = width - self.width
        self.lists = np.hstack([self.lists, np.full((self.n, pad), -1, np.int32)])
        self.vals = np.hstack([self.vals, np.zeros((self.n, pad))])
        self.width = width

    def _select(self, budget: int, pre: list[int], need: int, seed: int = 0) -> Selection:
        key = str(self.order).upper().replace("-", "")
        if key not in STAGE_ORDERS:
            raise ValueError(f"unknown stage order {self.order!r}")
        engine = Engine(self.sim, self.k, self.block_rows, None, self.rankable, self.runner)
        # Entries past a row's length are free: the end-of-ranking sentinel goes there, in
        # place (a copy of every list cost a third of a second at 100k).
        lists = self.lists[:, :need]
        short = np.flatnonzero(self.length < need)
        if len(short):
            part = lists[short]
            part[np.arange(need)[None, :] >= self.length[short, None]] = self.n
            lists[short] = part
        engine.lists = lists
        engine.rowsum = None if self.rowsum is None else self.rowsum.copy()
        engine.columns = self.columns
        engine.columns_max = self.column_cache_mib * 2**20 // (8 * self.n)
        rng = np.random.default_rng(seed)
        try:
            sel = _run(engine, "allabel", key, pre, budget, self.k, self.ratios, rng)
        finally:
            BUFFERS.__dict__.clear()
        used = set(pre) | set(sel.indices)  # the columns a plan like this one reads again
        self.columns = {j: c for j, c in self.columns.items() if j in used}
        return sel
