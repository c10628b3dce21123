"""Ranking metrics on a holdout: binary relevance, top-K lists as dense item indices (-1 = empty slot)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def ranking_metrics(recommended: np.ndarray, relevant: sp.csr_matrix, users: np.ndarray, k: int) -> dict[str, float]:
    """Mean precision@k, recall@k (|rel| denominator), NDCG@k and hit rate over ``users``.

    ``recommended[i]`` is the ranked list of user ``users[i]``; ``relevant`` is ``users × items``
    (indexed by user index) with the holdout items of each user.
    """
    recommended = recommended[:, :k]
    hits = np.zeros(recommended.shape, dtype=bool)
    n_rel = np.zeros(len(users))
    for row, user in enumerate(users):
        start, end = relevant.indptr[user], relevant.indptr[user + 1]
        rel = relevant.indices[start:end]
        n_rel[row] = len(rel)
        hits[row] = np.isin(recommended[row], rel) & (recommended[row] >= 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_rel])
    valid = n_rel > 0
    return {
        "users": int(valid.sum()),
        "precision": float((hits.sum(axis=1)[valid] / k).mean()) if valid.any() else 0.0,
        "recall": float((hits.sum(axis=1)[valid] / n_rel[valid]).mean()) if valid.any() else 0.0,
        "ndcg": float((dcg[valid] / ideal[valid]).mean()) if valid.any() else 0.0,
        "hit_rate": float((hits.any(axis=1)[valid]).mean()) if valid.any() else 0.0,
    }
