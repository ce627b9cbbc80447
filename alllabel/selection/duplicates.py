"""Exact and near-duplicate tasks.

Rule: two tasks are **near-duplicates** when the Jaccard similarity of their sets of character
5-grams is at least ``threshold`` (default 0.8), after NFKC normalisation, case folding and
collapsing every run of whitespace (spaces, tabs, CR/LF) into one space. They are **exact
duplicates** when those normalised texts are equal. A one-character edit in a 600-character
paragraph keeps J ~ 0.98; two MOF paragraphs that merely share a few sentences stay below 0.5.

Why shingles and not the similarity the selection already has (measured on MOF, see the
README): BM25 is a bag of words (a paragraph and its sentences shuffled score as equal) and
asymmetric; all-MiniLM reads only the first 256 word pieces, so texts that differ after them
embed identically. Character 5-grams see order and every character, the same for all scripts.

Finding the pairs without comparing all N^2: MinHash with one-permutation hashing (128 bins of
one 64-bit hash of each 5-gram) and LSH over 32 bands of 4 bins; texts that agree on a whole
band are candidates, and every candidate's Jaccard is then computed exactly on the 5-gram sets.
Before that exact step, a candidate whose signatures agree on fewer than (threshold - 0.2) of
the bins is dropped (an estimate of J with a standard deviation of ~0.035 at J = 0.8). So no
pair below the threshold is ever reported; a pair at J = 0.8 is missed with probability about
(1 - 0.8^4)^32 + 1e-8 ~ 1e-7. Hashes are fixed, so results are reproducible.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

SHINGLE = 5
BINS = 128
BANDS = 32
DEFAULT_THRESHOLD = 0.8
SIG_MARGIN = 0.2
_EMPTY = np.uint64(2**64 - 1)  # an OPH bin with no 5-gram
_WS = re.compile(r"\s+")
_P = np.uint64(0x100000001B3)  # FNV prime: a polynomial hash of the code points, mod 2^64


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace runs collapsed to one space, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def shingles(text: str) -> np.ndarray:
    """Sorted unique 64-bit hashes of the normalised text's character 5-grams (a shorter text: itself)."""
    norm = normalise(text)
    c = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(c) == 0:
        return np.empty(0, dtype=np.uint64)
    w = min(SHINGLE, len(c))
    with np.errstate(over="ignore"):
        h = np.zeros(len(c) - w + 1, dtype=np.uint64)
        for k in range(w):
            h = h * _P + c[k : len(c) - w + 1 + k] + np.uint64(1)
        return np.unique(_mix(h))


def _signature(sh: np.ndarray) -> np.ndarray:
    """One-permutation MinHash: the smallest hash in each of BINS bins (by the top bits)."""
    sig = np.full(BINS, _EMPTY, dtype=np.uint64)
    if len(sh):
        bins = (sh >> np.uint64(64 - 7)).astype(np.intp)  # BINS = 2^7: the top 7 bits
        np.minimum.at(sig, bins, sh & np.uint64(2**57 - 1))
    return sig


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


@dataclass
class Duplicates:
    """Near-duplicate pairs (i < j, Jaccard >= threshold) and, per task, its cluster's representative.

    Clusters are formed leader-first: tasks are visited in priority order (pre-chosen, i.e.
    annotated or queued, first; then by index); a task that is a near-duplicate of an earlier
    representative joins the most similar one, otherwise it becomes a representative itself.
    So every member is a *direct* near-duplicate of its representative (what projection needs),
    and no two representatives are near-duplicates of each other.
    """

    n: int
    threshold: float
    pairs: np.ndarray  # (P, 2) int64, i < j
    jaccard: np.ndarray  # (P,) float64
    representative: np.ndarray  # (n,) int64; representative[i] == i for representatives
    _neighbours: dict[int, list[tuple[float, int]]] = field(default_factory=dict, repr=False)

    @property
    def followers(self) -> np.ndarray:
        """Tasks that are represented by another task (the ones a human queue should skip)."""
        return np.flatnonzero(self.representative != np.arange(self.n))

    def neighbours(self, i: int) -> list[tuple[float, int]]:
        """(Jaccard, task) of every near-duplicate of ``i``, most similar first."""
        return self._neighbours.get(int(i), [])

    def best_source(self, i: int, annotated: Iterable[int]) -> tuple[int, float] | None:
        """The most similar annotated near-duplicate of ``i`` (ties: smaller index), if any."""
        have = set(annotated)
        for jac, j in self.neighbours(i):
            if j in have:
                return j, jac
        return None

    def within(self, items: Iterable[int]) -> list[tuple[int, int, float]]:
        """Near-duplicate pairs among ``items`` (e.g. a human queue): (i, j, Jaccard)."""
        s = set(int(i) for i in items)
        return [
            (int(a), int(b), float(j))
            for (a, b), j in zip(self.pairs, self.jaccard)
            if a in s and b in s
        ]


def find_duplicates(
    texts: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    priority: Iterable[int] = (),
) -> Duplicates:
    """Exact and near-duplicate pairs of ``texts`` and their clusters (see ``Duplicates``)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    n = len(texts)
    sizes = np.zeros(n, dtype=np.int64)
    sigs = np.empty((n, BINS), dtype=np.uint64)
    for i, t in enumerate(texts):
        sh = shingles(t)
        sizes[i] = len(sh)
        sigs[i] = _signature(sh)
    ci, cj = _candidates(sigs, sizes, threshold)
    # Exact Jaccard of the remaining candidates (5-gram sets recomputed for those texts only).
    sets = {i: shingles(texts[i]) for i in sorted(set(ci) | set(cj))}
    pairs, jac = [], []
    for i, j in zip(ci, cj):
        v = jaccard(sets[i], sets[j])
        if v >= threshold:
            pairs.append((i, j))
            jac.append(v)
    neighbours: dict[int, list[tuple[float, int]]] = {}
    for (i, j), v in zip(pairs, jac):
        neighbours.setdefault(i, []).append((v, j))
        neighbours.setdefault(j, []).append((v, i))
    for lst in neighbours.values():
        lst.sort(key=lambda t: (-t[0], t[1]))
    pairs_a = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    jac_a = np.array(jac, dtype=np.float64)
    representative = _leaders(n, neighbours, priority)
    return Duplicates(n, threshold, pairs_a, jac_a, representative, neighbours)


def _candidates(sigs: np.ndarray, sizes: np.ndarray, threshold: float) -> tuple[list, list]:
    """Pairs equal on all bins of at least one band, kept by the cheap filters: sizes
    (J <= min/max), and the share of the 128 bins on which the signatures agree (an estimate of
    J; SIG_MARGIN below the threshold loses a pair at J = 0.8 with probability ~1e-8)."""
    n = len(sizes)
    rows = BINS // BANDS
    codes = []
    with np.errstate(over="ignore"):
        for b in range(BANDS):
            band = sigs[:, b * rows : (b + 1) * rows]
            key = np.zeros(n, dtype=np.uint64)
            for r in range(rows):
                key = _mix(key * _P + band[:, r])
            order = np.argsort(key, kind="stable")
            ks = key[order]
            starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
            ends = np.r_[starts[1:], n]
            for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = np.sort(order[s:e]).astype(np.int64)
                a, c = np.triu_indices(len(members), 1)
                codes.append(members[a] * n + members[c])
    cand = np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)
    ci, cj = cand // n, cand % n
    keep = np.minimum(sizes[ci], sizes[cj]) >= threshold * np.maximum(sizes[ci], sizes[cj])
    ci, cj = ci[keep], cj[keep]
    agree = np.concatenate(
        [
            (sigs[ci[k : k + 65536]] == sigs[cj[k : k + 65536]]).mean(axis=1)
            for k in range(0, len(ci), 65536)
        ]
        or [np.empty(0)]
    )
    keep = agree >= threshold - SIG_MARGIN
    return ci[keep].tolist(), cj[keep].tolist()


def _leaders(n: int, neighbours: dict, priority: Iterable[int]) -> np.ndarray:
    """Each task's cluster leader, leader-first: ``priority`` tasks first, then by index; a task
    whose most similar earlier leader exists joins it, else it leads."""
    first = list(dict.fromkeys(int(p) for p in priority))
    seen = set(first)
    visit = first + [i for i in range(n) if i not in seen]
    rank = {u: r for r, u in enumerate(visit)}
    representative = np.arange(n, dtype=np.int64)
    is_rep = np.zeros(n, dtype=bool)
    for u in visit:
        leaders = [(v, j) for v, j in neighbours.get(u, []) if is_rep[j] and rank[j] < rank[u]]
        if leaders:
            representative[u] = min(leaders, key=lambda t: (-t[0], rank[t[1]]))[1]
        else:
            is_rep[u] = True
    return representative
