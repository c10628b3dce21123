"""Diversity: MMR (maximal marginal relevance) re-ranking of each user's candidates.

A list of ten near-identical items is a bad list. With ``diversity_strength`` λ > 0 the scoring
kernel keeps ``candidates(N)`` (2N) items per user instead of N (after history and rules are
masked), and ``mmr`` fills the N slots greedily: each slot takes the candidate maximising

    (1 - λ) · relevance - λ · (its highest similarity to an item already in the list)

where relevance is the model's score scaled to [0, 1] among the user's candidates and
similarity is the cosine of the items' category vectors (the same vectors the report's
intra-list diversity uses, so λ trades NDCG for exactly the diversity it shows). λ = 0 is the
plain ranking. The published ``scores`` are the MMR objective, which never increases down a
list (every candidate's objective can only fall as the list grows), so lists stay sorted.

Vectorised over a batch of users: N steps of array operations per batch, no Python per user or
per item; memory O(batch × candidates × categories).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Candidates per published slot. Chosen on the data of ``benchmarks/list_shaping.py`` (4,096
#: users, top-100, λ = 0.3, one thread): 2N candidates reach an intra-list diversity within 0.005
#: of 3N's (0.655 vs 0.660) at 72 % of the cost (selection + re-ranking, 19.8 vs 27.5 ms per batch
#: of 128 users; plain top-100: 8.7 ms). Only as many are examined as the greedy needs (``mmr``).
CANDIDATE_FACTOR = 2


def candidates(n: int, n_items: int) -> int:
    """How many candidates per user the kernel keeps for a list of ``n``."""
    return max(n, min(n_items, CANDIDATE_FACTOR * n))


class CategorySimilarity:
    """Cosine similarity of items' category vectors (binary, ``items × categories``).

    Up to 64 categories, an item's categories are one 32- or 64-bit mask and the similarity of two items
    is ``popcount(a & b) / sqrt(|a| · |b|)``: a few integer operations per pair instead of a dot
    product over the categories. More categories: dot products of the unit vectors. ``codes``
    gathers what a set of candidates needs once; ``between`` compares gathered codes."""

    def __init__(self, item_categories: sp.spmatrix, n_items: int):
        cats = sp.csr_matrix(item_categories, dtype=np.float32)
        cats.data[:] = 1.0
        if cats.shape[0] < n_items:
            cats = sp.vstack([cats, sp.csr_matrix((n_items - cats.shape[0], cats.shape[1]), dtype=np.float32)]).tocsr()
        cats = cats[:n_items]
        counts = np.diff(cats.indptr).astype(np.float32)
        self.inv_norm = np.divide(1.0, np.sqrt(counts), out=np.zeros_like(counts), where=counts > 0)
        self.bits = self.unit = None
        if cats.shape[1] <= 64:  # 32-bit masks where they fit: half the memory traffic per step
            kind = np.uint32 if cats.shape[1] <= 32 else np.uint64
            rows = np.repeat(np.arange(n_items), np.diff(cats.indptr))
            self.bits = np.zeros(n_items, dtype=kind)
            np.bitwise_or.at(self.bits, rows, np.left_shift(kind(1), cats.indices.astype(kind)))
        else:
            self.unit = cats.multiply(self.inv_norm[:, None]).toarray()

    def codes(self, items: np.ndarray) -> tuple[np.ndarray, ...]:
        """What ``between`` needs of ``items`` (any shape), gathered once."""
        if self.bits is not None:
            return self.bits[items], self.inv_norm[items]
        return (self.unit[items],)

    def between(self, a: tuple, b: tuple) -> np.ndarray:
        """``rows × i × j`` float32 similarities of codes ``a`` (``rows × i``) and ``b`` (``rows × j``)."""
        if self.bits is not None:
            shared = np.bitwise_count(a[0][:, :, None] & b[0][:, None, :]).astype(np.float32)
            return shared * a[1][:, :, None] * b[1][:, None, :]
        return np.matmul(a[0], np.swapaxes(b[0], 1, 2))


def unit_vectors(item_categories: sp.spmatrix, n_items: int) -> np.ndarray:
    """``n_items × categories`` float32 rows of unit length (an item without category: zeros,
    unlike everything)."""
    cats = sp.csr_matrix(item_categories, dtype=np.float32)
    if cats.shape[0] < n_items:
        cats = sp.vstack([cats, sp.csr_matrix((n_items - cats.shape[0], cats.shape[1]), dtype=np.float32)]).tocsr()
    dense = cats[:n_items].toarray()
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)


def mmr(idx: np.ndarray, vals: np.ndarray, similarity: CategorySimilarity, n: int,
        strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each row's candidates (``idx``/``vals``, best first, -1 padding) into ``n`` slots.

    A candidate's objective is ``min`` over the items listed so far of ``r - λ·sim`` (``r`` =
    (1 - λ) × relevance), so each slot costs one pass over the candidates examined. Only a
    leading window of them is examined: a candidate outside it scores at most its ``r``, which
    is sorted, so while every row's best inside beats the first ``r`` outside, the window holds
    the exact answer; when a row's does not, the window doubles (its new columns are compared
    with everything listed so far) and the slot is decided again.
    """
    rows, m = idx.shape
    width = min(n, m)
    if not rows or not m:
        return idx[:, :width], vals[:, :width]
    valid = idx >= 0
    lo = np.where(valid, vals, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, vals, -np.inf).max(axis=1, keepdims=True)
    span = np.where(np.isfinite(hi - lo) & (hi > lo), hi - lo, 1.0)
    r = np.where(valid, (vals - np.where(np.isfinite(lo), lo, 0.0)) / span * (1.0 - strength), -np.inf)
    r = r.astype(np.float32)
    lam = np.float32(strength)
    codes = similarity.codes(np.where(valid, idx, 0))
    lam_inv = lam * codes[1] if similarity.bits is not None else None

    def take(columns, lo_=None, hi_=None):  # codes at per-row candidate positions, or a column range
        if columns is None:
            return tuple(c[:, lo_:hi_] for c in codes)
        return tuple(c[every[:, None], columns] for c in codes)

    out_idx = np.full((rows, width), -1, dtype=np.int32)
    out_val = np.full((rows, width), -np.inf, dtype=np.float32)
    picked = np.zeros((rows, width), dtype=np.int64)  # candidate positions listed so far (columns < slot)
    every = np.arange(rows)
    window = min(m, width + max(8, width // 2))
    objective = r[:, :window].copy()
    for slot in range(width):
        while True:
            pick = objective.argmax(axis=1)  # ties: the better-ranked candidate
            value = objective[every, pick]
            if window == m or not (value < r[:, window]).any():
                break
            grown = min(m, 2 * window)  # some row may do better outside: widen, catch up, decide again
            fresh = r[:, window:grown].copy()
            if slot:
                sim = similarity.between(take(None, window, grown), take(picked[:, :slot])).max(axis=2)
                np.minimum(fresh, r[:, window:grown] - lam * sim, out=fresh)
            objective, window = np.hstack([objective, fresh]), grown
        ok = np.isfinite(value)
        out_idx[ok, slot] = idx[every[ok], pick[ok]]
        out_val[ok, slot] = value[ok]
        picked[:, slot] = pick
        objective[every, pick] = -np.inf
        if slot + 1 < width:
            if similarity.bits is not None:  # fused: popcount(a & b) · λ/|a|^½ · 1/|b|^½, in place
                shared = np.bitwise_count(codes[0][:, :window] & codes[0][every, pick][:, None])
                sim = np.multiply(shared, lam_inv[:, :window], dtype=np.float32)
                sim *= codes[1][every, pick][:, None]
            else:
                sim = similarity.between(take(None, 0, window), take(pick[:, None]))[:, :, 0]
                sim *= lam
            np.subtract(r[:, :window], sim, out=sim)
            np.minimum(objective, sim, out=objective)
    return out_idx, out_val
