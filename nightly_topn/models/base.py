"""One interface for every recommender: fit, score a batch, recommend, save/load without pickle.

A model sees interactions as a CSR matrix ``users × items`` of confidences (row = the dense
user index, column = the dense item index from the features' id maps). Scoring takes the
users' history rows too, so a user the model was not trained on (arrived after training, or
trained without history) is scored from that history ("fold-in"): factor models solve for the
user's factors, item-item models multiply the history by the item-item matrix. Only users with
no history at all need the popularity fallback.

Persistence is ``model.npz`` (plain numeric arrays, loaded with ``allow_pickle=False``) plus
``model.json`` (name, params, shapes); torch models store their state dict as arrays too.
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
TORCH_THREADS_ENV = "NIGHTLY_TOPN_TORCH_THREADS"
META_FILE = "model.json"


def torch_threads() -> int:
    """Intra-op threads for torch training: ``$NIGHTLY_TOPN_TORCH_THREADS``, default 1.

    Measured on the 2-core worker: the small matrices of these models run ~6x slower with 2
    threads than with 1 when the other core is busy (Beam, Airflow, a parallel task), so one
    thread is the robust default; raise it on a dedicated multi-core worker.
    """
    import os

    return max(1, int(os.environ.get(TORCH_THREADS_ENV, "1")))


def binarize(matrix: sp.spmatrix) -> sp.csr_matrix:
    """``users × items`` with every stored positive entry set to 1 (binary relevance), float32."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.data = np.ones_like(out.data)
    out.eliminate_zeros()
    return out


def align_history(history: sp.spmatrix, n_items: int) -> sp.csr_matrix:
    """History restricted/padded to the model's ``n_items`` columns (new items are unknown to it)."""
    history = sp.csr_matrix(history)
    if history.shape[1] == n_items:
        return history
    if history.shape[1] > n_items:
        return history[:, :n_items].tocsr()
    return sp.csr_matrix((history.data, history.indices, history.indptr), shape=(history.shape[0], n_items))


class Recommender(ABC):
    """Base class; subclasses set ``name``, implement ``fit``/``score`` and ``_arrays``/``_restore``.

    ``params`` are JSON-serialisable constructor arguments: ``type(model)(**model.params)``
    re-creates an unfitted model with the same configuration (used by tuning and loading).
    """

    name: ClassVar[str]
    #: Whether ``score`` can fold in a user it was not trained on from the history row.
    folds_in: ClassVar[bool] = True

    def __init__(self, **params):
        self.params = params
        self.n_items = 0
        self.n_users = 0

    @abstractmethod
    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "Recommender":
        """Learn from ``users × items`` confidences (every stored entry is a positive).

        ``times`` (optional, same sparsity): the pair's latest event time, for models that use
        order or recency; the others ignore it.
        """

    @abstractmethod
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """Scores ``len(users) × n_items`` (float32) for dense user indices; ``history`` rows align with ``users``."""

    def has_user(self, users: np.ndarray, history: sp.csr_matrix | None = None) -> np.ndarray:
        """Which users this model scores itself (others get the fallback).

        Without ``history``: the users it was trained on. With ``history`` (rows aligned with
        ``users``): also every user with at least one known item, scored by fold-in.
        """
        users = np.asarray(users)
        known = self._trained_users(users)
        if history is not None and self.folds_in:
            known |= np.diff(align_history(history, self.n_items).indptr) > 0
        return known

    def _trained_users(self, users: np.ndarray) -> np.ndarray:
        """Users with learned state; item-item models know no users (they always use history)."""
        known = getattr(self, "known", None)
        if known is None:
            return np.zeros(len(users), dtype=bool)
        ok = (users >= 0) & (users < len(known))
        ok[ok] = known[users[ok]]
        return ok

    def recommend(self, users: np.ndarray, history: sp.csr_matrix, n: int, *, filter_seen: bool = True):
        """Top-``n`` item indices (int32, -1 = none left) and scores (float32) per user, best first.

        Items in the user's ``history`` are excluded when ``filter_seen``.
        """
        history = align_history(history, self.n_items)
        scores = np.asarray(self.score(np.asarray(users), history), dtype=np.float32)
        if filter_seen:
            scoring.mask_seen(scores, history)
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
        meta = {"name": self.name, "params": self.params, "n_items": int(self.n_items), "n_users": int(self.n_users)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def describe(self) -> dict:
        """Name, constructor params and fitted shape (what the registry and report show)."""
        return {"name": self.name, "params": dict(self.params), "n_users": int(self.n_users),
                "n_items": int(self.n_items)}


def sparse_arrays(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    matrix = sp.csr_matrix(matrix)
    return {f"{prefix}_data": matrix.data, f"{prefix}_indices": matrix.indices, f"{prefix}_indptr": matrix.indptr,
            f"{prefix}_shape": np.asarray(matrix.shape, dtype=np.int64)}


def sparse_from(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    return sp.csr_matrix((arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
                         shape=tuple(int(x) for x in arrays[f"{prefix}_shape"]))


def load_model(directory: str | Path) -> Recommender:
    """Load a model saved by ``Recommender.save`` (arrays with ``allow_pickle=False``)."""
    from nightly_topn.models import MODELS

    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta["name"] not in MODELS:
        raise ValueError(f"{directory}: unknown model {meta['name']!r}; known: {sorted(MODELS)}")
    model = MODELS[meta["name"]](**meta["params"])
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as data:
        model._restore({k: data[k] for k in data.files})
    model.n_items = meta["n_items"]
    model.n_users = meta.get("n_users", 0)
    return model
