"""Compiled inner loops (numba), for the parts numpy cannot do without N x N temporaries.

``add_postings``: out[r, :] += sum over the terms t of query row rows[r] of
count(t) * (weights of t in every document), walking each term's postings list. This is the
sparse half of a BM25 row block written straight into the dense block (scipy's sparse product
would build a CSR matrix of the same size first). All operands are integer-valued float64 and
every partial sum stays below 2**53, so the result is exact and independent of order.
"""

from __future__ import annotations

import os
import tempfile

# numba caches compiled code next to this file; an installed, read-only package (the Docker image
# runs as a non-root user) gets a cache folder under the temp dir instead of failing to import.
if not os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK):
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "alllabel-numba"))

import numba  # noqa: E402


@numba.njit(nogil=True, cache=True)
def add_postings(
    q_ptr, q_idx, q_val, rows, w_ptr, w_doc, w_val, out
):  # pragma: no cover - compiled
    for r in range(rows.shape[0]):
        i = rows[r]
        o = out[r]
        for p in range(q_ptr[i], q_ptr[i + 1]):
            t = q_idx[p]
            c = q_val[p]
            for s in range(w_ptr[t], w_ptr[t + 1]):
                o[w_doc[s]] += c * w_val[s]
