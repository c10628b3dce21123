"""A sequence model over each user's most recent items, in torch (CPU only).

Why this model: what a user interacts with next is best predicted by what they interacted
with *last*, and by what is being consumed *now* — signals the bag-of-items models (EASE,
kNN, factor models) cannot see. On a temporal split this matters a lot (on MovieLens 100K the
classical models sit near 0.18 NDCG@10, a popularity of the last fortnight alone near 0.24).

Architecture: the last ``max_len`` items (chronological, left-padded) → item + position
embeddings → learned attention pooling → residual MLP → logits over the catalogue (output
embeddings + item bias) plus a learned function of each item's *recent* popularity (log counts
over the preceding ``TREND_WINDOWS`` days, as of the moment being predicted). Trained with
full-softmax cross-entropy to predict each next item from the items before it and the
catalogue's trend at that time; at scoring time the trend is the one at the end of training.
Training and scoring run the same network (``_network()``; scoring in eval mode under
``torch.inference_mode``); its ``state_dict`` is saved as plain arrays (npz, ``m0.item_emb.weight``,
...), so loading never unpickles anything.

Order: ``fit`` takes ``times`` (CSR aligned with ``interactions``: the pair's latest event
time) to build sequences and stores each trained user's last ``max_len`` items. A user the
model was not trained on is folded in from the history row; without times there the items
are taken in index order (a bag), which still works but loses recency.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import (Recommender, align_history, binarize, load_states, state_arrays,
                                      torch_scores, torch_threads)

DAY = 86_400.0
TREND_WINDOWS = (1, 7, 30)  # days of recent activity per trend feature (+ all history before)
TREND_FEATURES = len(TREND_WINDOWS) + 1  # features per item and day in ``trend_table``


def trend_table(items: np.ndarray, days: np.ndarray, n_items: int, n_days: int) -> np.ndarray:
    """``(n_days + 1) × n_items × F``: for day d, log1p of each item's interactions in the
    ``TREND_WINDOWS`` days before d (d excluded) and ever before d. Row ``n_days`` = after the end."""
    counts = np.zeros((n_days + 1, n_items), dtype=np.float64)
    np.add.at(counts, (days, items), 1.0)
    cum = np.vstack([np.zeros((1, n_items)), np.cumsum(counts, axis=0)])  # cum[d] = count of days < d
    feats = []
    idx = np.arange(n_days + 1)
    for w in TREND_WINDOWS:
        feats.append(cum[idx] - cum[np.maximum(idx - w, 0)])
    feats.append(cum[idx])
    return np.log1p(np.stack(feats, axis=-1)).astype(np.float32)


def user_sequences(interactions: sp.csr_matrix, times: sp.csr_matrix | None) -> list[np.ndarray]:
    """Each row's item indices ordered by time (ties and missing times: by item index)."""
    X = sp.csr_matrix(interactions)
    X.sort_indices()
    T = None
    if times is not None:
        T = sp.csr_matrix(times, dtype=np.float64)
        T.sort_indices()
        if T.nnz != X.nnz or not np.array_equal(T.indices, X.indices) or not np.array_equal(T.indptr, X.indptr):
            # align: look up time per stored pair of X (0 when unknown)
            T = sp.csr_matrix((np.asarray(T[X.nonzero()]).ravel(), X.indices, X.indptr), shape=X.shape)
    out = []
    for r in range(X.shape[0]):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        items = X.indices[lo:hi]
        if T is not None and hi > lo:
            items = items[np.argsort(T.data[lo:hi], kind="stable")]
        out.append(items.astype(np.int64))
    return out


@functools.cache
def _network():
    """The ``nn.Module`` class, defined on first use: importing this file must not import torch
    (Airflow parses the DAGs, Beam pickles the DoFns)."""
    import torch
    from torch import nn

    class SequenceNet(nn.Module):
        """Item + position embeddings of a window → attention pooling → residual MLP → item logits,
        plus a learned function of each item's trend features."""

        def __init__(self, n_items: int, max_len: int, dim: int, dropout: float):
            super().__init__()
            self.pad = n_items  # the index of "no item" (left padding)
            self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
            self.pos_emb = nn.Parameter(torch.zeros(max_len, dim))
            self.att = nn.Linear(dim, 1)
            self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.norm = nn.LayerNorm(dim)
            self.out_emb = nn.Linear(dim, n_items)
            self.trend_mlp = nn.Sequential(nn.Linear(TREND_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
            self.drop = nn.Dropout(dropout)
            self.register_buffer("trend_now", torch.zeros(n_items, TREND_FEATURES))  # trend after training
            nn.init.normal_(self.item_emb.weight, std=0.05)
            with torch.no_grad():
                self.item_emb.weight[self.pad].zero_()

        def forward(self, window, trend=None, day=None):
            """Logits for each row of ``window`` (the last ``max_len`` item indices, left-padded);
            ``trend`` (days × items × features) and ``day`` (the row's day in it), by default
            ``trend_now`` for every row."""
            e = self.drop(self.item_emb(window) + self.pos_emb)
            a = self.att(torch.tanh(e)).squeeze(-1).masked_fill(window == self.pad, -1e9)
            h = (torch.softmax(a, dim=1).unsqueeze(-1) * e).sum(dim=1)
            h = self.norm(h + self.mlp(h))
            item_trend = self.trend_mlp(self.trend_now if trend is None else trend).squeeze(-1)
            return self.out_emb(self.drop(h)) + (item_trend if day is None else item_trend[day])

    return SequenceNet


class SequenceRecommender(Recommender):
    name = "sequence"

    def __init__(self, dim: int = 64, max_len: int = 50, epochs: int = 10, batch_size: int = 512, lr: float = 3e-3,
                 dropout: float = 0.2, weight_decay: float = 0.0, seed: int = 42, **extra):
        super().__init__(dim=dim, max_len=max_len, epochs=epochs, batch_size=batch_size, lr=lr, dropout=dropout,
                         weight_decay=weight_decay, seed=seed, **extra)

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "SequenceRecommender":
        import torch

        torch.set_num_threads(torch_threads())
        nn = torch.nn
        p = self.params
        X = binarize(interactions)
        n_users, n_items = X.shape
        L = int(p["max_len"])
        seqs = user_sequences(X, times)
        day_of = _pair_days(X, times)  # per user: day index of each item in seqs order
        n_days = int(max((d.max() for d in day_of if len(d)), default=0)) + 1
        flat_items = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        flat_days = np.concatenate(day_of) if day_of else np.zeros(0, np.int64)
        trend = trend_table(flat_items, flat_days, n_items, n_days)
        # training examples: (user, position t) predicting seqs[user][t] from the items before t
        ex_user = np.concatenate([np.full(max(len(s) - 1, 0), u) for u, s in enumerate(seqs)]) if seqs else np.zeros(0, int)
        ex_pos = np.concatenate([np.arange(1, len(s)) for s in seqs if len(s) > 1]) if any(len(s) > 1 for s in seqs) else np.zeros(0, int)
        if len(ex_user) == 0:
            raise ValueError("the sequence model needs at least one user with two or more interactions")
        pad = n_items
        padded = np.full((n_users, max(len(s) for s in seqs) + L), pad, dtype=np.int64)  # left pad of L
        for u, s in enumerate(seqs):
            padded[u, L:L + len(s)] = s

        torch.manual_seed(int(p["seed"]))
        gen = torch.Generator().manual_seed(int(p["seed"]))
        net = self._net(n_items).train()
        opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        padded_t = torch.from_numpy(padded)
        offsets = torch.arange(L)
        ex_day = np.concatenate([d[1:] for d in day_of if len(d) > 1]).astype(np.int64)
        ex_user_t, ex_pos_t, ex_day_t = torch.from_numpy(ex_user), torch.from_numpy(ex_pos), torch.from_numpy(ex_day)
        trend_t = torch.from_numpy(trend)
        batch = int(p["batch_size"])
        self.stopped_early, epochs = None, int(p["epochs"])
        for epoch in range(epochs):
            order = torch.randperm(len(ex_user_t), generator=gen)
            for lo in range(0, len(order), batch):
                sel = order[lo:lo + batch]
                u, t = ex_user_t[sel], ex_pos_t[sel]
                cols = t.unsqueeze(1) + offsets  # padded coords: the L items before position t
                window = padded_t[u.unsqueeze(1), cols]
                target = padded_t[u, t + L]
                days, inverse = torch.unique(ex_day_t[sel], return_inverse=True)  # few distinct days per batch
                loss = nn.functional.cross_entropy(net(window, trend_t[days], inverse), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if self._stop_here(epoch + min(lo + batch, len(order)) / len(order), epochs, "epochs"):  # the search's deadline
                    break
            if self.stopped_early:
                break
        with torch.no_grad():
            net.trend_now.copy_(trend_t[n_days])  # the catalogue's trend right after the training data
        self.net = net.eval()
        recent = np.full((n_users, L), pad, dtype=np.int32)
        for u, s in enumerate(seqs):
            tail = s[-L:]
            if len(tail):
                recent[u, L - len(tail):] = tail
        self.recent = recent
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = n_users, n_items
        return self

    def _net(self, n_items: int):
        p = self.params
        return _network()(n_items, int(p["max_len"]), int(p["dim"]), float(p["dropout"]))

    # -- scoring -------------------------------------------------------------------------------
    def _windows(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        L, pad = self.recent.shape[1], self.n_items
        known = self._trained_users(users)
        windows = np.full((len(users), L), pad, dtype=np.int64)
        if known.any():
            windows[known] = self.recent[users[known]]
        for r in np.flatnonzero(~known):
            items = history.indices[history.indptr[r]:history.indptr[r + 1]][-L:]
            if len(items):
                windows[r, L - len(items):] = items
        return windows

    def score(self, users, history):
        import torch

        users = np.asarray(users)
        window = torch.from_numpy(self._windows(users, binarize(align_history(history, self.n_items))))
        return torch_scores([self.net], len(users), self.n_items, lambda lo, hi: self.net(window[lo:hi]))

    def _arrays(self):
        return {**state_arrays([self.net]), "recent": self.recent, "known": self.known}

    def _restore(self, arrays):
        self.net = self._net(self.n_items)
        load_states([self.net], arrays)
        self.recent = arrays["recent"].astype(np.int32)
        if self.recent.ndim != 2 or self.recent.shape[1] != int(self.params["max_len"]):
            raise ValueError(f"'recent' has shape {self.recent.shape}, not (users, max_len={self.params['max_len']})")
        self.known = arrays["known"].astype(bool)


def _pair_days(X: sp.csr_matrix, times: sp.csr_matrix | None) -> list[np.ndarray]:
    """Per user, the day index (from the first day in the data) of each item, in sequence order."""
    if times is None:
        return [np.zeros(X.indptr[r + 1] - X.indptr[r], dtype=np.int64) for r in range(X.shape[0])]
    T = sp.csr_matrix(times, dtype=np.float64)
    T.sort_indices()
    X = sp.csr_matrix(X)
    X.sort_indices()
    vals = np.asarray(T[X.nonzero()]).ravel() if T.nnz != X.nnz or not np.array_equal(T.indices, X.indices) else T.data
    vals = np.where(np.isfinite(vals), vals, 0.0)
    start = vals[vals > 0].min() if (vals > 0).any() else 0.0
    days = np.maximum(np.floor((vals - start) / DAY), 0).astype(np.int64)
    out = []
    for r in range(X.shape[0]):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        out.append(days[lo:hi][np.argsort(vals[lo:hi], kind="stable")])
    return out
