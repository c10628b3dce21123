"""One interface for every recommender: fit, score a batch, recommend, save/load without pickle.

A model sees interactions as a CSR matrix ``users × items`` of confidences (row = the dense
user index, column = the dense item index from the features' id maps). Scoring takes the
users' history rows too, so models that can fold in new users do so from the history.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from nightly_topn import scoring

ARRAYS_FILE = "model.npz"
META_FILE = "model.json"


class Recommender(ABC):
    """Base class; subclasses set ``name``, implement ``fit``/``score`` and ``_arrays``/``_restore``."""

    name: ClassVar[str]

    def __init__(self, **params):
        self.params = params
        self.n_items = 0

    @abstractmethod
    def fit(self, interactions: sp.csr_matrix) -> "Recommender":
        """Learn from ``users × items`` confidences."""

    @abstractmethod
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """Scores ``len(users) × n_items`` (float32) for dense user indices; ``history`` rows align with ``users``."""

    def has_user(self, users: np.ndarray) -> np.ndarray:
        """Which users this model can score (others get the fallback). Default: all."""
        return np.ones(len(users), dtype=bool)

    def recommend(self, users: np.ndarray, history: sp.csr_matrix, n: int, *, filter_seen: bool = True):
        """Top-``n`` item indices and scores per user, best first; seen items excluded (index -1 = none left)."""
        scores = self.score(np.asarray(users), history)
        if filter_seen:
            scoring.mask_seen(scores, history[:, : scores.shape[1]] if history.shape[1] > scores.shape[1] else history)
        return scoring.top_n(scores, n)

    # -- persistence (npz + JSON, never pickle) -----------------------------------------------
    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """The learned state as plain numeric arrays."""

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of ``_arrays``."""

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / ARRAYS_FILE, **self._arrays())
        meta = {"name": self.name, "params": self.params, "n_items": int(self.n_items)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def describe(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}


def load_model(directory: str | Path) -> Recommender:
    """Load a model saved by ``Recommender.save`` (arrays with ``allow_pickle=False``)."""
    from nightly_topn.models import MODELS

    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    model = MODELS[meta["name"]](**meta["params"])
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as data:
        model._restore({k: data[k] for k in data.files})
    model.n_items = meta["n_items"]
    return model
