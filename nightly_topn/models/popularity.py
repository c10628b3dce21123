"""Most-interacted items first: the baseline every model must beat, and the cold-start fallback."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import Recommender


class Popularity(Recommender):
    name = "popularity"

    def fit(self, interactions: sp.csr_matrix) -> "Popularity":
        binary = interactions.copy()
        binary.data = np.ones_like(binary.data)
        counts = np.asarray(binary.sum(axis=0)).ravel().astype(np.float32)
        # A tiny index-based tiebreak keeps equal counts in a stable order.
        self.item_scores = counts
        self.n_items = interactions.shape[1]
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.item_scores, (len(users), 1))

    def _arrays(self):
        return {"item_scores": self.item_scores}

    def _restore(self, arrays):
        self.item_scores = arrays["item_scores"].astype(np.float32)
