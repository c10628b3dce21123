"""A recency-aware autoencoder trained for the nightly task itself, in torch (CPU only).

Why this model: the lists published tonight are judged by what users do in the *following
days*. The classical models learn "which items go together" from a bag of all history; they
cannot see that tastes drift and that the catalogue's demand moves (new releases, trends).
This model is trained on exactly the deployment question, replayed at past cut-offs:

    given each user's history before day τ (recent items weigh more: half-life ``half_life_days``)
    and the catalogue's recent popularity at τ, predict the items the user interacts with in
    [τ, τ + ``horizon_days``)

for ``cutoffs`` cut-offs spaced ``stride_days`` apart, ending at the last training day. The
network is a Mult-DAE-style encoder/decoder (L2-normalised, dropout-corrupted weighted history →
tanh → logits over the catalogue) plus a learned function of each item's recent log counts;
the loss is the multinomial log-likelihood of the future items. On a temporal split of
MovieLens 100K this is what beats EASE/PureSVD/ALS (the benchmark shows by how much).

Scoring uses the history as of the end of training (stored recency weights) for trained users;
any other user is folded in from the history row (weight 1 = "recent"). Without ``times`` the
model degrades to a denoising autoencoder of the whole history (no cut-offs, no trend).
Training and scoring run the same network (``_network()``; scoring in eval mode under
``torch.inference_mode``); its ``state_dict`` is saved as plain arrays (npz, ``m0.enc.weight``, ...),
so loading never unpickles anything.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import (Recommender, align_history, binarize, load_states, sparse_arrays, sparse_from,
                                      state_arrays, torch_rows, torch_scores, torch_threads)
from nightly_topn.models.confidence import check_scheme, weigh
from nightly_topn.models.sequence import DAY, TREND_FEATURES, trend_table


def _days(X: sp.csr_matrix, times: sp.csr_matrix | None) -> np.ndarray | None:
    """Day index (from the first day) of every stored entry of X (CSR order), or None without times."""
    if times is None:
        return None
    T = sp.csr_matrix(times, dtype=np.float64)
    T.sort_indices()
    if T.nnz != X.nnz or not np.array_equal(T.indices, X.indices) or not np.array_equal(T.indptr, X.indptr):
        vals = np.asarray(T[X.nonzero()]).ravel()
    else:
        vals = T.data
    vals = np.where(np.isfinite(vals) & (vals > 0), vals, np.nan)
    if np.isnan(vals).all():
        return None
    start = np.nanmin(vals)
    vals = np.where(np.isnan(vals), start, vals)
    return np.floor((vals - start) / DAY).astype(np.int64)


@functools.cache
def _network():
    """The ``nn.Module`` class, defined on first use: importing this file must not import torch
    (Airflow parses the DAGs, Beam pickles the DoFns)."""
    import torch
    from torch import nn

    class HorizonNet(nn.Module):
        """Normalised weighted history → tanh encoder → item logits, plus a learned function of
        each item's trend features. The encoder is linear on the sparse history (``torch_rows``):
        an embedding bag + bias."""

        def __init__(self, n_items: int, hidden: int, dropout: float):
            super().__init__()
            self.enc, self.enc_bias = nn.EmbeddingBag(n_items, hidden, mode="sum"), nn.Parameter(torch.zeros(hidden))
            self.dec = nn.Linear(hidden, n_items)
            self.trend_mlp = nn.Sequential(nn.Linear(TREND_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
            self.drop = nn.Dropout(dropout)
            self.register_buffer("trend_now", torch.zeros(n_items, TREND_FEATURES))  # trend after training
            nn.init.xavier_uniform_(self.enc.weight)
            nn.init.xavier_uniform_(self.dec.weight)
            nn.init.zeros_(self.dec.bias)

        def forward(self, history, trend=None, cutoff=None):
            """Logits for ``history`` rows (``torch_rows`` of the weighted history); ``trend`` (cut-offs
            × items × features) and ``cutoff`` (the row's cut-off in it), by default ``trend_now`` for every row."""
            items, offsets, weights = history
            h = torch.tanh(self.enc(items, offsets, per_sample_weights=self.drop(weights)) + self.enc_bias)
            item_trend = self.trend_mlp(self.trend_now if trend is None else trend).squeeze(-1)
            return self.dec(self.drop(h)) + (item_trend if cutoff is None else item_trend[cutoff])

    return HorizonNet


class HorizonRecommender(Recommender):
    name = "horizon"

    def __init__(self, hidden: int = 256, horizon_days: int = 14, stride_days: int = 7, cutoffs: int = 20,
                 half_life_days: float = 30.0, dropout: float = 0.5, epochs: int = 30, batch_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 0.0, confidence: str = "binary", seed: int = 42, **extra):
        super().__init__(hidden=hidden, horizon_days=horizon_days, stride_days=stride_days, cutoffs=cutoffs,
                         half_life_days=half_life_days, dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, confidence=check_scheme(confidence), seed=seed, **extra)

    def _examples(self, X: sp.csr_matrix, days: np.ndarray | None):
        """(inputs CSR, targets CSR, cut-off index per example, trend table, recency CSR at the end).
        ``X`` holds the weighted confidences: inputs are weighted by them and by recency; every
        future positive is a target of weight 1."""
        p = self.params
        n_users, n_items = X.shape
        rows = np.repeat(np.arange(n_users), np.diff(X.indptr))
        cols, conf = X.indices, X.data
        if days is None:  # no order known: reconstruct the whole history (denoising autoencoder)
            trend = np.zeros((1, n_items, TREND_FEATURES), dtype=np.float32)
            return X, binarize(X), np.zeros(n_users, dtype=np.int64), trend, X, 0
        last = int(days.max())
        end = last + 1
        trend = trend_table(cols, days, n_items, end)  # trend[τ] = activity before day τ
        half = float(p["half_life_days"])
        inputs, targets, taus = [], [], []
        stride, horizon = int(p["stride_days"]), int(p["horizon_days"])
        for k in range(1, int(p["cutoffs"]) + 1):
            tau = end - k * stride
            if tau <= 0:
                break
            before = days < tau
            future = (days >= tau) & (days < tau + horizon)
            users_f = np.unique(rows[future])
            users_b = np.unique(rows[before])
            keep = np.intersect1d(users_f, users_b)
            if not len(keep):
                continue
            sel_b = before & np.isin(rows, keep)
            sel_f = future & np.isin(rows, keep)
            remap = np.full(n_users, -1)
            remap[keep] = np.arange(len(keep))
            w = (np.power(0.5, (tau - days[sel_b]) / half) * conf[sel_b]).astype(np.float32)
            inputs.append(sp.csr_matrix((w, (remap[rows[sel_b]], cols[sel_b])), shape=(len(keep), n_items)))
            targets.append(sp.csr_matrix((np.ones(sel_f.sum(), np.float32), (remap[rows[sel_f]], cols[sel_f])),
                                         shape=(len(keep), n_items)))
            taus.append(np.full(len(keep), tau))
        recency = sp.csr_matrix(((np.power(0.5, (end - days) / half) * conf).astype(np.float32), (rows, cols)),
                                shape=X.shape)
        if not inputs:  # too little history for any cut-off: fall back to reconstruction
            return X, binarize(X), np.full(n_users, end), trend, recency, end
        return sp.vstack(inputs).tocsr(), sp.vstack(targets).tocsr(), np.concatenate(taus), trend, recency, end

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "HorizonRecommender":
        import torch

        torch.set_num_threads(torch_threads())
        p = self.params
        X = weigh(interactions, p["confidence"])
        X.sort_indices()
        n_users, n_items = X.shape
        if X.nnz == 0:
            raise ValueError("the horizon model cannot train on an empty interaction matrix")
        inputs, targets, taus, trend, recency, end = self._examples(X, _days(X, times))
        torch.manual_seed(int(p["seed"]))
        gen = torch.Generator().manual_seed(int(p["seed"]))
        net = self._net(n_items).train()
        opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        trend_t = torch.from_numpy(trend)
        taus_t = torch.from_numpy(taus.astype(np.int64))
        batch = int(p["batch_size"])
        n_ex = inputs.shape[0]
        self.stopped_early, epochs = None, int(p["epochs"])
        for epoch in range(epochs):
            order = torch.randperm(n_ex, generator=gen).numpy()
            for lo in range(0, n_ex, batch):
                sel = order[lo:lo + batch]
                y = torch.from_numpy(targets[sel].toarray())
                uniq, inverse = torch.unique(taus_t[sel], return_inverse=True)
                logits = net(torch_rows(inputs[sel]), trend_t[uniq], inverse)
                loss = -(torch.log_softmax(logits, dim=1) * y).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if self._stop_here(epoch + min(lo + batch, n_ex) / n_ex, epochs, "epochs"):  # the search's deadline
                    break
            if self.stopped_early:
                break
        with torch.no_grad():
            net.trend_now.copy_(trend_t[min(end, len(trend) - 1)])
        self.net = net.eval()
        self.recency = sp.csr_matrix(recency, dtype=np.float32)
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = n_users, n_items
        return self

    def _net(self, n_items: int):
        return _network()(n_items, int(self.params["hidden"]), float(self.params["dropout"]))

    def score(self, users, history):
        users = np.asarray(users)
        history = weigh(align_history(history, self.n_items), self.params["confidence"])
        known = self._trained_users(users)
        take = np.arange(len(users))  # trained users: their time-weighted history at the end of training
        take[known] = len(users) + np.arange(known.sum())
        x = sp.vstack([history, self.recency[users[known]]], format="csr")[take]
        return torch_scores([self.net], len(users), self.n_items,
                            lambda lo, hi: self.net(torch_rows(x[lo:hi])))

    def _arrays(self):
        return {**state_arrays([self.net]), **sparse_arrays("recency", self.recency), "known": self.known}

    def _restore(self, arrays):
        self.net = self._net(self.n_items)
        load_states([self.net], arrays)
        self.recency = sparse_from("recency", arrays).astype(np.float32)
        self.known = arrays["known"].astype(bool)
