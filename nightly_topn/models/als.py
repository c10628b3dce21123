"""Implicit-feedback matrix factorisation (``implicit``'s ALS), with confidence weighting."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import Recommender


class ALS(Recommender):
    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 2.0,
                 iterations: int = 15, seed: int = 42, **extra):
        super().__init__(factors=factors, regularization=regularization, alpha=alpha,
                         iterations=iterations, seed=seed, **extra)

    def fit(self, interactions: sp.csr_matrix) -> "ALS":
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        model = AlternatingLeastSquares(
            factors=p["factors"], regularization=p["regularization"], alpha=p["alpha"],
            iterations=p["iterations"], random_state=p["seed"], num_threads=1,
            calculate_training_loss=False,
        )
        model.fit(interactions.astype(np.float32).tocsr(), show_progress=False)
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.known = np.diff(interactions.indptr) > 0
        self.n_items = interactions.shape[1]
        return self

    def has_user(self, users):
        users = np.asarray(users)
        ok = users < len(self.known)
        ok[ok] = self.known[users[ok]]
        return ok

    def score(self, users, history):
        users = np.minimum(np.asarray(users), len(self.user_factors) - 1)
        return self.user_factors[users] @ self.item_factors.T

    def _arrays(self):
        return {"user_factors": self.user_factors, "item_factors": self.item_factors, "known": self.known}

    def _restore(self, arrays):
        self.user_factors = arrays["user_factors"]
        self.item_factors = arrays["item_factors"]
        self.known = arrays["known"].astype(bool)
