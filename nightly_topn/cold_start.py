"""Cold start: new items placed in any model's score space through their warm attribute neighbours.

An item that arrived a few days ago has no or too few interactions: preprocess leaves it out of
the warm catalogue (``item_map``) and no model has a column for it. Its attributes (categories,
title words) are known, though, so preprocess finds its ``m`` most similar warm items (TF-IDF
over category and title tokens, cosine) with weights that sum to 1 and stores them in
``features/dt=D/new_items.parquet``. Scoring places the new item at the weighted average of
those neighbours' scores for the user, ``cold = warm_scores @ W`` (``W``: ``n_warm × n_cold``,
``features.NewItems.weights``): it needs nothing but the model's own scores, so it works for
every model, and the new item competes with warm ones on the model's own scale.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

#: Warm neighbours kept per new item. Few: an average over many neighbours pulls a new item's score
#: toward the catalogue's mean, and it rarely reaches a top-K. Measured with the held-out check of
#: ``benchmarks/cold_start.py`` (100 hidden items, recall@10 of their future users; 1, 2, 3, 5, 20
#: neighbours): embedded generator 0.467, 0.501, 0.504, 0.487, 0.345; MovieLens 100K 0.051, 0.010,
#: 0.010, 0.000, 0.000 (random neighbours: 0.025 / 0.030 at 1, ≤ 0.005 from 3 on). 3 is the best
#: or near it on both without placing new items by one look-alike alone.
DEFAULT_NEIGHBOURS = 3
#: Title tokens: runs of word characters (lower-cased); categories are taken whole.
_SEPARATORS = r"[^\w]+"
#: Most similarity entries held at once while searching neighbours (rows per chunk = this / n_warm).
_CHUNK_ENTRIES = 1 << 22


def _tokens(values: pa.ChunkedArray | pa.Array, prefix: str, split: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(row, token)`` pairs of a string column (split into words) or a list-of-strings column."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if split:
        values = pc.split_pattern_regex(pc.utf8_lower(values), _SEPARATORS)
    rows = pc.list_parent_indices(values).to_numpy()
    flat = pc.utf8_lower(pc.list_flatten(values)) if not split else pc.list_flatten(values)
    keep = pc.and_kleene(pc.is_valid(flat), pc.greater(pc.utf8_length(flat), 0))
    flat = pc.binary_join_element_wise(pa.scalar(prefix), flat.filter(keep), ":")
    return rows[keep.to_numpy(zero_copy_only=False)], flat.to_numpy(zero_copy_only=False)


def catalogue(attributes: pa.Table) -> pa.Table:
    """The landed item attributes as ``schemas.ITEMS``, one row per id (the first), sorted by id."""
    from nightly_topn import schemas

    attrs = schemas.conform(attributes, schemas.ITEMS, source="items.parquet", check_nulls=False)
    attrs = attrs.filter(pc.is_valid(attrs.column("item_id")))
    _, first = np.unique(attrs.column("item_id").to_numpy(zero_copy_only=False), return_index=True)
    return attrs.take(pa.array(first))


def rows_of(attrs: pa.Table, ids) -> pa.Table:
    """``attrs`` rows in the order of ``ids`` (a null row for an id without attributes)."""
    return attrs.take(pc.index_in(pa.array(ids, pa.string()), value_set=attrs.column("item_id")))


def attribute_matrix(items: pa.Table) -> sp.csr_matrix:
    """``items × tokens`` TF-IDF of ``categories`` (one-hot) and ``title`` words, rows L2-normalised.

    Rows follow ``items`` (a null row — an item without attributes — stays zero). A token that
    only one item has is dropped: it can never relate two items, it would only shrink cosines.
    IDF is the smoothed ``log((1 + n) / (1 + df)) + 1``, so shared rare words weigh more than a
    category half the catalogue has.
    """
    n = items.num_rows
    parts = [_tokens(items.column("categories"), "c", split=False), _tokens(items.column("title"), "t", split=True)]
    rows = np.concatenate([p[0] for p in parts]).astype(np.int64)
    names = np.concatenate([p[1] for p in parts])
    if not len(rows):
        return sp.csr_matrix((n, 0), dtype=np.float32)
    vocab, codes = np.unique(names, return_inverse=True)
    tf = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, codes)), shape=(n, len(vocab)))
    tf.sum_duplicates()
    if len(parts[0][0]):  # a category counts once however often it is listed
        is_category = np.char.startswith(vocab.astype(str), "c:")
        tf.data[is_category[tf.indices]] = 1.0
    df = np.diff(tf.tocsc().indptr)
    keep = np.flatnonzero(df >= 2)
    tf = tf[:, keep]
    idf = (np.log((1.0 + n) / (1.0 + df[keep])) + 1.0).astype(np.float32)
    x = sp.csr_matrix(tf @ sp.diags(idf), dtype=np.float32)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-30), 0.0).astype(np.float32)) @ x
    return sp.csr_matrix(x, dtype=np.float32)


def neighbours(cold: sp.csr_matrix, warm: sp.csr_matrix, m: int = DEFAULT_NEIGHBOURS, *,
               prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``m`` warm neighbours of every cold row by cosine (rows of both are unit vectors).

    Returns CSR arrays ``(indptr, warm_index, weight)`` over the cold rows, best first, weights
    proportional to the similarity and summing to 1 per row; a row with no positive similarity
    (no shared token) is empty. Equal similarities are ordered by ``prior`` (higher first: the
    warm items' interaction counts, whose scores are the better estimated), then by lower index.
    Vectorised by chunks of cold rows (one sparse product each, at most ``_CHUNK_ENTRIES`` entries).
    """
    n_cold, n_warm = cold.shape[0], warm.shape[0]
    prior = np.zeros(n_warm) if prior is None else np.asarray(prior, dtype=np.float64)
    warm_t = sp.csr_matrix(warm.T)
    step = max(1, _CHUNK_ENTRIES // max(n_warm, 1))
    rows, cols, vals = [], [], []
    for lo in range(0, n_cold, step):
        sims = sp.coo_matrix(cold[lo:lo + step] @ warm_t)
        keep = sims.data > 0
        r, c, v = sims.row[keep].astype(np.int64) + lo, sims.col[keep].astype(np.int64), sims.data[keep]
        order = np.lexsort((c, -prior[c], -np.round(v, 6), r))  # by row, then best first
        r, c, v = r[order], c[order], v[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
        top = rank < m
        rows.append(r[top]), cols.append(c[top]), vals.append(v[top])
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    v = np.concatenate(vals).astype(np.float64) if vals else np.empty(0)
    indptr = np.zeros(n_cold + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_cold), out=indptr[1:])
    totals = np.add.reduceat(v, indptr[:-1][np.diff(indptr) > 0]) if len(v) else np.empty(0)
    v = v / np.repeat(totals, np.diff(indptr)[np.diff(indptr) > 0])
    return indptr, c.astype(np.int32), v.astype(np.float32)


def weight_matrix(neighbors: pa.ListArray, weights: pa.ListArray, n_warm: int) -> sp.csr_matrix:
    """``W`` (``n_warm × n_cold``, CSR) from ``new_items.parquet``'s list columns: column ``j`` holds
    new item ``j``'s neighbour weights, so ``warm_scores @ W`` are the new items' scores."""
    offsets = neighbors.offsets.to_numpy()
    by_cold = sp.csr_matrix((weights.flatten().to_numpy().astype(np.float32), neighbors.flatten().to_numpy(),
                             offsets - offsets[0]), shape=(len(neighbors), n_warm))
    return sp.csr_matrix(by_cold.T)


def new_item_table(ids: np.ndarray, first_seen: np.ndarray, indptr: np.ndarray, warm_index: np.ndarray,
                   weight: np.ndarray, seen_indptr: np.ndarray, seen_users: np.ndarray) -> pa.Table:
    """The ``schemas.NEW_ITEMS`` table from per-item CSR arrays (no Python per item)."""
    from nightly_topn import schemas

    def lists(indptr, values, kind):
        return pa.ListArray.from_arrays(pa.array(indptr.astype(np.int32)), pa.array(values, kind))

    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(first_seen, pa.timestamp("us", tz="UTC")),
         lists(indptr, warm_index, pa.int32()), lists(indptr, weight, pa.float32()),
         lists(seen_indptr, seen_users, pa.int32())],
        schema=schemas.NEW_ITEMS)


def coverage(recommended: np.ndarray, n_warm: int, n_cold: int) -> dict:
    """How far new items reach in lists of item indices (cold = ``n_warm + j``, -1 = empty)."""
    recs = np.asarray(recommended)
    cold = recs >= n_warm
    shown = np.zeros(n_cold, dtype=bool)
    shown[recs[cold] - n_warm] = True
    return reach(shown, len(recs), int(cold.any(axis=1).sum()))


def reach(shown: np.ndarray, users: int, users_with_new_item: int) -> dict:
    """The new-item coverage figures: how many new items exist, how many are in at least one
    list, the share of users shown at least one (evaluation.json and the top-N manifest alike)."""
    return {"new_items": int(len(shown)), "new_items_shown": int(np.count_nonzero(shown)),
            "share_new_items_shown": float(np.mean(shown)) if len(shown) else 0.0,
            "users": int(users), "users_with_new_item": int(users_with_new_item),
            "share_users_with_new_item": users_with_new_item / users if users else 0.0}
