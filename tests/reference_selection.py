"""A literal, slow implementation of the selection rules, written independently of alllabel.

Pure Python, exact arithmetic (fractions) for means and sumranks, no shortcuts.

Exclusions (``exclude``, beyond the paper): excluded items are taken out of U's columns - they
are never candidates, never in a ranking, not in the core-set's means - and stay queries.
With ``exclude=()`` every function is the paper's rule unchanged.
"""

from fractions import Fraction
from math import floor


def sizes(m, ratios):
    r = [Fraction(x) for x in ratios]
    tot = sum(r)
    n_d = floor(m * r[0] / tot + Fraction(1, 2))
    n_u = floor(m * r[2] / tot + Fraction(1, 2))
    return n_d, m - n_d - n_u, n_u


def ranking(U, a, allowed):
    """Items in `allowed` other than a, most similar to a first, ties to the smaller index."""
    return sorted((j for j in allowed if j != a), key=lambda j: (-U[a][j], j))


def diversity(U, chosen, count, exclude=()):
    n = len(U)
    cols = [j for j in range(n) if j not in exclude]
    picked = []
    if not chosen:
        means = {
            i: sum(Fraction(U[i][j]) for j in cols if j != i) / (len(cols) - 1)
            if len(cols) > 1
            else 0
            for i in cols
        }
        seed = min(cols, key=lambda i: (means[i], i))
        picked.append(seed)
    while len(picked) < count:
        sel = list(chosen) + picked
        rest = [i for i in cols if i not in sel]
        picked.append(min(rest, key=lambda i: (max(U[i][j] for j in sel), i)))
    return picked[:count]


def sumrank(U, queries, candidates, k, x, count):
    score = {b: Fraction(0) for b in candidates}
    for a in queries:
        for rank, b in enumerate(ranking(U, a, candidates), start=1):
            if rank <= k:
                score[b] += 1
            elif rank <= x:
                score[b] += Fraction(1, rank - k + 1)
    return sorted(candidates, key=lambda b: (-score[b], b))[:count]


def weak_points(U, d1, count, exclude=()):
    n = len(U)
    depth = {}
    for a in range(n):
        order = ranking(U, a, [j for j in range(n) if j not in exclude])
        pos = [p for p, j in enumerate(order, start=1) if j in d1]
        depth[a] = pos[0] if pos else n
    return sorted(range(n), key=lambda a: (-depth[a], a))[:count]


def select(U, m, k=3, ratios=(1, 3, 1), order="DSU", pre=(), exclude=()):
    n = len(U)
    exclude = set(exclude) - set(pre)
    n_d, n_s, n_u = sizes(m, ratios)
    chosen = list(pre)
    out, stages = [], []
    for stage in order:
        if stage == "D":
            got, name = diversity(U, chosen, n_d, exclude), "diversity"
        elif stage == "S":
            cands = [b for b in range(n) if b not in chosen and b not in exclude]
            got, name = (sumrank(U, range(n), cands, k, n_s, n_s) if n_s else []), "similarity"
        else:
            name = "uncertainty"
            got = []
            if n_u:
                weak = weak_points(U, set(chosen), n_u, exclude)
                cands = [b for b in range(n) if b not in chosen and b not in exclude]
                got = sumrank(U, weak, cands, k, n_u, n_u)
        chosen += got
        out += got
        stages += [name] * len(got)
    return out, stages
