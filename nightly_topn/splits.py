"""Evaluation splits: how interactions are split into train and test (and validation), by protocol.

Both work on parallel arrays of events/pairs in input order (``users``, ``items``, ``times``)
and return a boolean ``test`` mask plus the rows that count as relevant:

* ``temporal`` (T): cutoff = the ``quantile`` of event times (``numpy.percentile``, linear);
  train = rows before it; test = rows at or after it whose user *and* item occur in train.
* ``random`` (R): every user with at least ``min_user`` rows sends ``max(1, round(frac·n))``
  of them to test: the rows with the smallest keys of one ``default_rng(seed).random()`` draw
  per row in input order. Test items absent from train stay relevant (they just cannot be hit).

``validation_split`` carves a validation split from the training rows the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

PROTOCOLS = ("random", "temporal")


@dataclass
class Split:
    """Row masks of one split over the input rows (``relevant`` ⊆ ``test``; rows in neither are dropped)."""

    protocol: str
    train: np.ndarray
    relevant: np.ndarray
    info: dict


def binary_matrix(users, items, shape) -> sp.csr_matrix:
    """``users × items`` with a 1 at every listed pair (duplicates collapse to 1), float32."""
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def random_split(users: np.ndarray, *, frac: float = 0.2, min_user: int = 5, seed: int = 42) -> Split:
    """Per-user random holdout (protocol R); see the module docstring for the exact rule."""
    users = np.asarray(users)
    keys = np.random.default_rng(seed).random(len(users))
    _, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
    n_test = np.where(counts >= min_user, np.maximum(1, np.round(frac * counts)), 0).astype(np.int64)
    order = np.lexsort((keys, inverse))  # by user, then key ascending
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[inverse[order]]
    test = rank < n_test[inverse]
    return Split("random", ~test, test, {"frac": frac, "min_user": min_user, "seed": seed,
                                         "test_rows": int(test.sum()), "test_users": int((n_test > 0).sum())})


def temporal_split(users: np.ndarray, items: np.ndarray, times: np.ndarray, *, quantile: float = 0.8) -> Split:
    """Global temporal cutoff (protocol T); see the module docstring for the exact rule."""
    users, items, times = np.asarray(users), np.asarray(items), np.asarray(times)
    cutoff = np.percentile(times, quantile * 100.0) if len(times) else 0
    train = times < cutoff
    late = ~train
    relevant = late & np.isin(users, users[train]) & np.isin(items, items[train])
    return Split("temporal", train, relevant, {"quantile": quantile, "cutoff": cutoff.item() if hasattr(cutoff, "item") else cutoff,
                                               "test_rows": int(relevant.sum()),
                                               "test_users": int(len(np.unique(users[relevant])))})


def split(protocol: str, users, items, times=None, *, seed: int = 42, quantile: float = 0.8, frac: float = 0.2,
          min_user: int = 5) -> Split:
    if protocol == "random":
        return random_split(users, frac=frac, min_user=min_user, seed=seed)
    if protocol == "temporal":
        if times is None:
            raise ValueError("the temporal protocol needs event times")
        return temporal_split(users, items, times, quantile=quantile)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")


def validation_split(protocol: str, users, items, times, train_mask: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Carve validation from the train rows with the same protocol (seed + 1 for R).

    Returns (fit rows, validation-relevant rows) as masks over the full input.
    """
    rows = np.flatnonzero(train_mask)
    kwargs = dict(kwargs)
    if protocol == "random":
        kwargs["seed"] = kwargs.get("seed", 42) + 1
    inner = split(protocol, np.asarray(users)[rows], np.asarray(items)[rows],
                  None if times is None else np.asarray(times)[rows], **kwargs)
    fit = np.zeros(len(train_mask), dtype=bool)
    val = np.zeros(len(train_mask), dtype=bool)
    fit[rows[inner.train]] = True
    val[rows[inner.relevant]] = True
    return fit, val


@dataclass
class PairTable:
    """The prepared (user, item) pairs of a features partition, in file order, with times in µs.

    Models fit on confidences (``matrix``: what preprocess made of the events; each model
    decides how to weigh them); evaluation counts every pair as one positive (``relevance``).
    """

    users: np.ndarray
    items: np.ndarray
    confidence: np.ndarray
    first_time: np.ndarray
    last_time: np.ndarray
    split: np.ndarray  # preprocess's temporal labels: "train" / "holdout" / "late"
    shape: tuple[int, int]

    @classmethod
    def of(cls, features) -> "PairTable":
        """The pairs of a loaded ``features.Features`` (no second read of the partition)."""
        return cls(features.users, features.items, features.confidence, features.first_time, features.last_time,
                   features.split, features.shape)

    def matrix(self, mask: np.ndarray | None = None) -> sp.csr_matrix:
        """``users × items`` confidences of the pairs in ``mask`` (all when None), float32."""
        mask = np.ones(len(self.users), dtype=bool) if mask is None else mask
        m = sp.csr_matrix((self.confidence[mask].astype(np.float32), (self.users[mask], self.items[mask])),
                          shape=self.shape)
        m.sum_duplicates()
        return m

    def relevance(self, mask: np.ndarray | None = None) -> sp.csr_matrix:
        """``users × items`` binary relevance of the pairs in ``mask`` (the evaluation rule)."""
        mask = np.ones(len(self.users), dtype=bool) if mask is None else mask
        return binary_matrix(self.users[mask], self.items[mask], self.shape)

    def times(self, mask: np.ndarray | None = None) -> sp.csr_matrix:
        """Latest event time per pair (seconds), same sparsity as ``matrix(mask)``."""
        mask = np.ones(len(self.users), dtype=bool) if mask is None else mask
        t = sp.csr_matrix((self.last_time[mask] / 1e6, (self.users[mask], self.items[mask])), shape=self.shape)
        t.sum_duplicates()
        return t


def pipeline_split(pairs: PairTable, protocol: str, *, seed: int = 42) -> Split:
    """The nightly run's evaluation split of its prepared pairs.

    ``temporal`` reuses preprocess's holdout (pairs first seen at or after the holdout quantile
    of event times, user and item known before it); ``random`` is protocol R over the pairs.
    """
    if protocol == "temporal":
        s = Split("temporal", pairs.split == "train", pairs.split == "holdout", {})
        s.info = {"test_rows": int(s.relevant.sum()), "test_users": int(len(np.unique(pairs.users[s.relevant])))}
        return s
    return split(protocol, pairs.users, pairs.items, pairs.first_time, seed=seed)
