"""Most-interacted items first: the baseline every model must beat, and the cold-start fallback."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import Recommender, binarize


class Popularity(Recommender):
    """Items ranked by how many distinct users interacted with them (binary counts)."""

    name = "popularity"
    folds_in = False

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "Popularity":
        counts = np.asarray(binarize(interactions).sum(axis=0)).ravel().astype(np.float32)
        self.item_scores = counts
        self.n_users, self.n_items = interactions.shape
        return self

    def has_user(self, users, history=None):
        return np.ones(len(users), dtype=bool)  # it scores anyone (that is what a fallback is for)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.item_scores, (len(users), 1))

    def _arrays(self):
        return {"item_scores": self.item_scores}

    def _restore(self, arrays):
        self.item_scores = arrays["item_scores"].astype(np.float32)
