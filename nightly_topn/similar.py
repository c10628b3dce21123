"""Similar items: the K most similar catalogue items of every item, the night's second output.

What a product page shows ("more like this"), computed from the night's chosen model: the
cosine of its item factors when it has them (ALS, BPR, PureSVD, ...), else the cosine of the
items' columns in the training data (who interacted with both: what item-kNN uses), which every
model's data has. An item is never its own neighbour, and items the candidate rules exclude for
everyone (``exclude``, availability windows) are never listed; per-user rules do not apply to
a page every user sees. With co-occurrence, an item shares users with fewer than K others only
so often: its list holds those (no zero-similarity filler).

Blocks of items at a time: one product into a ``block × items`` float32 buffer, self and
exclusions masked, exact top-K (``scoring.top_n``); memory O(block × items).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Items per product: the buffer is ``BLOCK × items`` float32 (1024 × 27K = 110 MB).
BLOCK = 1024


def item_vectors(model) -> np.ndarray | None:
    """The model's item factors scaled to unit length (float32), or None when it has none."""
    factors = getattr(model, "item_factors", None)
    if not isinstance(factors, np.ndarray) or factors.ndim != 2 or not len(factors):
        return None
    factors = np.ascontiguousarray(factors, dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)


def similar_items(model, interactions: sp.csr_matrix, k: int, excluded: np.ndarray | None = None,
                  *, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, str]:
    """``(items × k indices, scores, method)``, best first, -1/-inf padding; ``method`` is
    ``"factors"`` or ``"co-occurrence"``."""
    from nightly_topn.scoring import top_n

    n_items = interactions.shape[1]
    unit = item_vectors(model)
    if unit is not None and len(unit) != n_items:
        unit = None  # factors of another catalogue: not this night's items
    if unit is None:
        binary = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
        binary.data[:] = 1.0
        by_item = sp.csr_matrix(binary.T)
        inv_norm = 1.0 / np.sqrt(np.maximum(np.diff(by_item.indptr), 1)).astype(np.float32)
        binary_csc = sp.csc_matrix(binary)
    k = min(k, max(n_items - 1, 0))
    idx = np.full((n_items, k), -1, dtype=np.int32)
    vals = np.full((n_items, k), -np.inf, dtype=np.float32)
    excluded = np.asarray(excluded if excluded is not None else [], dtype=np.int64)
    for lo in range(0, n_items, block):
        hi = min(n_items, lo + block)
        if unit is not None:
            scores = unit[lo:hi] @ unit.T
        else:
            scores = (by_item[lo:hi] @ binary_csc).toarray().astype(np.float32)
            scores *= inv_norm[lo:hi, None] * inv_norm[None, :]
            scores[scores <= 0] = -np.inf  # shares no user: not similar, not listed
        scores[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # never itself
        if len(excluded):
            scores[:, excluded] = -np.inf
        i, v = top_n(scores, k)
        idx[lo:hi, : i.shape[1]], vals[lo:hi, : i.shape[1]] = i, v
    return idx, vals, "factors" if unit is not None else "co-occurrence"
