"""The scoring kernel: mask what a user has seen and pick the top N, a batch of users at a time.

Memory is bounded by ``batch × items``; history stays sparse (CSR) and is applied by index.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> None:
    """Set ``scores[r, i] = -inf`` for every item ``i`` in row ``r`` of ``seen`` (in place)."""
    if seen.nnz:
        rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``n`` best columns per row, best first (ties: lower index first).

    Entries equal to ``-inf`` (masked) are returned with index -1 so callers can drop them.
    """
    n = min(n, scores.shape[1])
    if n < scores.shape[1]:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1) if vals.size else part
    idx = np.take_along_axis(part, order, axis=1).astype(np.int32)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    idx[~np.isfinite(vals)] = -1
    return idx, vals
