"""Matrix-factorisation models from ``implicit`` (ALS, BPR) and PureSVD (scikit-learn).

Known users are scored with their learned factors; a user the model was not trained on (or
who had no training rows) is folded in from the history row: a least-squares solve against
the fixed item factors (ALS's own user update; a ridge projection for BPR), or the
projection ``h Vᵀ V`` for PureSVD. ALS and PureSVD weigh their input by their ``confidence``
knob (``models.confidence``); BPR is binary by construction (``implicit`` samples a user's
positives uniformly, whatever their values).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from nightly_topn.models.base import Recommender, align_history, binarize, fit_threads
from nightly_topn.models.confidence import check_scheme, weigh


def fold_in_als(item_factors: np.ndarray, history: sp.csr_matrix, regularization: float, alpha: float) -> np.ndarray:
    """Implicit-ALS user update for each history row: ``(YᵀY + Yₛᵀ(C-1)Yₛ + λI)⁻¹ Yₛᵀ C 1``.

    ``history`` holds the (weighted) positives; the confidence of one is ``alpha`` times its
    value, as ``implicit`` scales its input.
    """
    Y = item_factors.astype(np.float64)
    f = Y.shape[1]
    gram = Y.T @ Y + regularization * np.eye(f)
    out = np.zeros((history.shape[0], f), dtype=np.float64)
    for row in range(history.shape[0]):
        lo, hi = history.indptr[row], history.indptr[row + 1]
        if lo == hi:
            continue
        Ys = Y[history.indices[lo:hi]]
        conf = np.maximum(alpha * history.data[lo:hi].astype(np.float64), 1e-6)
        A = gram + Ys.T @ ((conf - 1.0)[:, None] * Ys)
        b = conf @ Ys
        out[row] = np.linalg.solve(A, b)
    return out.astype(np.float32)


class _Stopped(Exception):
    """Raised from implicit's per-iteration callback to end a fit at its deadline."""


class _FactorModel(Recommender):
    """Shared scoring: learned user factors for known users, fold-in for the others."""

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def _input(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The model's view of interactions or history rows (its confidence weighting)."""
        return binarize(matrix)

    def _fit_implicit(self, model, interactions: sp.csr_matrix) -> "_FactorModel":
        """Fit an ``implicit`` model on the weighted interactions and keep its factors."""
        X = self._input(interactions)
        self.stopped_early = None

        def check(iteration, *_):  # after each of implicit's iterations: stop at the search's deadline
            if iteration + 1 < model.iterations and self._stop_here(iteration + 1, model.iterations, "iterations"):
                raise _Stopped

        with threadpool_limits(1, "blas"):  # implicit's own threads do the work; BLAS threads would contend
            try:
                model.fit(X, show_progress=False, callback=check)
            except _Stopped:  # the factors hold the completed iterations
                pass
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = X.shape
        return self

    def score(self, users, history):
        users = np.asarray(users)
        history = self._input(align_history(history, self.n_items))
        known = self._trained_users(users)
        vecs = np.zeros((len(users), self.item_factors.shape[1]), dtype=np.float32)
        if known.any():
            vecs[known] = self.user_factors[users[known]]
        if (~known).any():
            vecs[~known] = self._fold_in(history[np.flatnonzero(~known)])
        return vecs @ self.item_factors.T

    def _arrays(self):
        return {"user_factors": self.user_factors, "item_factors": self.item_factors, "known": self.known}

    def _restore(self, arrays):
        self.user_factors = arrays["user_factors"].astype(np.float32)
        self.item_factors = arrays["item_factors"].astype(np.float32)
        self.known = arrays["known"].astype(bool)


class ALS(_FactorModel):
    """``implicit`` alternating least squares on weighted interactions scaled by ``alpha``."""

    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 2.0,
                 iterations: int = 15, confidence: str = "binary", seed: int = 42, **extra):
        super().__init__(factors=factors, regularization=regularization, alpha=alpha,
                         iterations=iterations, confidence=check_scheme(confidence), seed=seed, **extra)

    def _input(self, matrix):
        return weigh(matrix, self.params["confidence"])

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "ALS":
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        model = AlternatingLeastSquares(
            factors=int(p["factors"]), regularization=float(p["regularization"]), alpha=float(p["alpha"]),
            iterations=int(p["iterations"]), random_state=int(p["seed"]), num_threads=fit_threads(),
            calculate_training_loss=False,
        )
        return self._fit_implicit(model, interactions)

    def _fold_in(self, history):
        return fold_in_als(self.item_factors, history, float(self.params["regularization"]), float(self.params["alpha"]))


class BPR(_FactorModel):
    """``implicit`` Bayesian personalised ranking (single-threaded, so runs are reproducible)."""

    name = "bpr"

    def __init__(self, factors: int = 64, learning_rate: float = 0.05, regularization: float = 0.01,
                 iterations: int = 100, seed: int = 42, **extra):
        super().__init__(factors=factors, learning_rate=learning_rate, regularization=regularization,
                         iterations=iterations, seed=seed, **extra)

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "BPR":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        p = self.params
        model = BayesianPersonalizedRanking(
            factors=int(p["factors"]), learning_rate=float(p["learning_rate"]),
            regularization=float(p["regularization"]), iterations=int(p["iterations"]),
            random_state=int(p["seed"]), num_threads=1,
        )
        # implicit appends a bias column: item_factors[:, -1] = item bias, user_factors[:, -1] = 1.
        return self._fit_implicit(model, interactions)

    def _fold_in(self, history):
        # Ridge projection of the history on the item factors (without the bias column), bias kept.
        Y = self.item_factors[:, :-1]
        vecs = fold_in_als(Y, history, max(float(self.params["regularization"]), 0.01) * 10, 1.0)
        return np.hstack([vecs, np.ones((len(vecs), 1), dtype=np.float32)])


class PureSVD(Recommender):
    """Truncated SVD of the weighted matrix (scikit-learn); scores ``h Vᵀ V`` from the history."""

    name = "puresvd"

    def __init__(self, factors: int = 64, n_iter: int = 7, confidence: str = "binary", seed: int = 42, **extra):
        super().__init__(factors=factors, n_iter=n_iter, confidence=check_scheme(confidence), seed=seed, **extra)

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "PureSVD":
        from sklearn.decomposition import TruncatedSVD

        X = weigh(interactions, self.params["confidence"]).astype(np.float64)
        k = int(min(self.params["factors"], min(X.shape) - 1))
        if k < 1:
            raise ValueError(f"PureSVD needs at least 2 users and 2 items, got {X.shape}")
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=int(self.params["n_iter"]),
                           random_state=int(self.params["seed"]))
        svd.fit(X)
        self.item_factors = np.ascontiguousarray(svd.components_.T, dtype=np.float32)  # items × k
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = X.shape
        return self

    def score(self, users, history):
        history = weigh(align_history(history, self.n_items), self.params["confidence"])
        return np.asarray((history @ self.item_factors) @ self.item_factors.T, dtype=np.float32)

    def _arrays(self):
        return {"item_factors": self.item_factors, "known": self.known}

    def _restore(self, arrays):
        self.item_factors = arrays["item_factors"].astype(np.float32)
        self.known = arrays["known"].astype(bool)
