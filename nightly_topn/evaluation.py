"""Top-K ranking metrics with binary relevance.

``recommended`` is ``n × ≥K`` dense item indices (``-1`` = empty slot), row ``r`` ranked best
first for the user whose relevant items are row ``r`` of ``relevant`` (CSR ``n × items``).
Users with no relevant item are skipped. Definitions (averaged over evaluated users):

* ``precision`` = hits / K;  ``recall`` = hits / |rel|;  ``recall_capped`` = hits / min(|rel|, K)
* ``ndcg`` = DCG / IDCG with IDCG over min(|rel|, K) slots; ``map`` = Σ_hits (hits so far / rank) / min(|rel|, K)
  — both exactly as ``implicit.evaluation.ranking_metrics_at_k`` computes them (a test checks);
  note implicit's "precision" is a pooled capped recall, not P@K.
* ``hit_rate`` = share of users with ≥ 1 hit;  ``mrr`` = 1 / rank of the first hit (0 if none in K)
* ``coverage`` = distinct recommended items / catalogue size
* ``novelty`` = mean −log2(share of training users who interacted with the item) over recommended items
* ``diversity`` (intra-list) = mean pairwise cosine distance of the items' category vectors
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

def hits_matrix(recommended: np.ndarray, relevant: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``hits[r, j]`` = item at rank j of row r is relevant; and |rel| per row."""
    recs = np.asarray(recommended)[:, :k]
    relevant = sp.csr_matrix(relevant)
    if recs.shape[1] < k:
        recs = np.hstack([recs, np.full((recs.shape[0], k - recs.shape[1]), -1, dtype=recs.dtype)])
    rows = np.repeat(np.arange(recs.shape[0]), k)
    flat = recs.ravel()
    ok = flat >= 0
    hit = np.zeros(flat.shape, dtype=bool)
    if ok.any():
        hit[ok] = np.asarray(relevant[rows[ok], flat[ok]]).ravel() > 0
    n_rel = np.diff(relevant.indptr)
    return hit.reshape(recs.shape), n_rel


def per_user_accuracy(recommended: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, np.ndarray]:
    """Each accuracy metric per row (NaN where the row has no relevant item)."""
    hits, n_rel = hits_matrix(recommended, relevant, k)
    valid = n_rel > 0
    n_hits = hits.sum(axis=1)
    cap = np.minimum(n_rel, k).astype(np.float64)
    safe_rel, safe_cap = np.where(valid, n_rel, 1), np.where(valid, cap, 1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.maximum(safe_cap.astype(int), 1) - 1]
    dcg = (hits * discounts).sum(axis=1)
    ranks = np.arange(1, k + 1)
    ap = (hits * (np.cumsum(hits, axis=1) / ranks)).sum(axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    out = {
        "precision": n_hits / k,
        "recall": n_hits / safe_rel,
        "recall_capped": n_hits / safe_cap,
        "ndcg": dcg / ideal,
        "map": ap / safe_cap,
        "hit_rate": (n_hits > 0).astype(np.float64),
        "mrr": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0),
    }
    return {name: np.where(valid, values, np.nan) for name, values in out.items()}


def beyond_accuracy(recommended: np.ndarray, k: int, n_items: int, *, item_popularity: np.ndarray | None = None,
                    n_train_users: int | None = None, item_categories: sp.csr_matrix | None = None) -> dict[str, float]:
    """Coverage, novelty and intra-list diversity of the lists themselves (no relevance needed)."""
    recs = np.asarray(recommended)[:, :k]
    flat = recs[recs >= 0]
    out = {"coverage": float(len(np.unique(flat)) / n_items) if n_items else 0.0}
    if item_popularity is not None and len(flat):
        users = n_train_users or max(float(np.max(item_popularity)), 1.0)
        share = np.maximum(np.asarray(item_popularity, dtype=np.float64)[flat], 1.0) / users
        out["novelty"] = float(np.mean(-np.log2(np.minimum(share, 1.0))))
    if item_categories is not None and len(flat):
        out["diversity"] = intra_list_diversity(recs, item_categories)
    return out


def intra_list_diversity(recs: np.ndarray, item_categories: sp.csr_matrix, chunk: int = 4096) -> float:
    """Mean over lists of the mean pairwise cosine distance between items' category vectors.

    Items without any category count as unlike everything (distance 1). Vectorised: with unit
    vectors ``e`` of a list's ``n`` items, the sum of pairwise similarities is ``|Σe|² - Σ|e|²``.
    """
    from nightly_topn.diversity import unit_vectors

    unit = unit_vectors(item_categories, item_categories.shape[0])
    recs = np.asarray(recs)
    total, lists = 0.0, 0
    for lo in range(0, len(recs), chunk):
        block = recs[lo:lo + chunk]
        valid = block >= 0
        emb = unit[np.where(valid, block, 0)] * valid[:, :, None]
        n = valid.sum(axis=1)
        pair_sum = np.square(emb.sum(axis=1, dtype=np.float64)).sum(axis=1) - np.square(emb, dtype=np.float64).sum(axis=(1, 2))
        judged = n >= 2
        total += float((1.0 - pair_sum[judged] / (n[judged] * (n[judged] - 1))).sum())
        lists += int(judged.sum())
    return total / lists if lists else 0.0


def ranking_metrics(recommended: np.ndarray, relevant: sp.csr_matrix, k: int, *, n_items: int | None = None,
                    item_popularity: np.ndarray | None = None, n_train_users: int | None = None,
                    item_categories: sp.csr_matrix | None = None, segments: np.ndarray | None = None) -> dict:
    """All metrics at ``k``: means of the accuracy metrics over users with relevant items,
    beyond-accuracy metrics over those users' lists, and (with ``segments``, one label per row)
    the accuracy metrics per segment.
    """
    relevant = sp.csr_matrix(relevant)
    per_user = per_user_accuracy(recommended, relevant, k)
    valid = np.diff(relevant.indptr) > 0
    result: dict = {"k": k, "users": int(valid.sum())}
    for name, values in per_user.items():
        result[name] = float(np.nanmean(values)) if valid.any() else 0.0
    # standard error of the mean NDCG over users (the model choice's one-standard-error rule uses it)
    result["ndcg_se"] = float(np.nanstd(per_user["ndcg"], ddof=1) / np.sqrt(valid.sum())) if valid.sum() > 1 else 0.0
    result.update(beyond_accuracy(np.asarray(recommended)[valid], k, n_items or relevant.shape[1],
                                  item_popularity=item_popularity, n_train_users=n_train_users,
                                  item_categories=item_categories))
    if segments is not None:
        segments = np.asarray(segments)
        result["segments"] = {}
        for label in sorted(set(segments[valid].tolist())):
            mask = valid & (segments == label)
            result["segments"][str(label)] = {"users": int(mask.sum()),
                                              **{name: float(np.mean(v[mask])) for name, v in per_user.items()}}
    return result


def evaluate_model(model, train: sp.csr_matrix, relevant: sp.csr_matrix, k: int, *, batch_size: int = 2048,
                   segments: np.ndarray | None = None, item_categories: sp.csr_matrix | None = None,
                   users: np.ndarray | None = None) -> dict:
    """Recommend ``k`` items (train history masked) for every user with relevant items and score them.

    ``train`` and ``relevant`` are ``users × items``; a user with no train history gets the
    model's fold-in if it can, else the model's own scores on an empty history.
    """
    relevant = sp.csr_matrix(relevant)
    train = sp.csr_matrix(train)
    if users is None:
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    recs = recommend_all(model, users, train, k, batch_size=batch_size)
    pop = np.asarray((train > 0).sum(axis=0)).ravel()
    return ranking_metrics(recs, relevant[users], k, n_items=train.shape[1], item_popularity=pop,
                           n_train_users=int((np.diff(train.indptr) > 0).sum()),
                           item_categories=item_categories,
                           segments=None if segments is None else np.asarray(segments)[users])


def recommend_all(model, users: np.ndarray, history: sp.csr_matrix, n: int, *, batch_size: int = 2048) -> np.ndarray:
    out = np.full((len(users), n), -1, dtype=np.int32)
    for lo in range(0, len(users), batch_size):
        chunk = users[lo:lo + batch_size]
        idx, _ = model.recommend(chunk, history[chunk], n)
        out[lo:lo + len(chunk), : idx.shape[1]] = idx
    return out
