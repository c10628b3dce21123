"""Item-item models: ``implicit`` item-kNN (cosine or BM25 weighting) and EASE (closed form).

Both score a user as ``history × item-item matrix``, so any user with history — including one
who arrived after training — is scored the same way. Both weigh their input (training matrix
and history rows alike) by their ``confidence`` knob (``models.confidence``).
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from nightly_topn.models.base import Recommender, align_history, sparse_arrays, sparse_from
from nightly_topn.models.confidence import check_scheme, weigh


class ItemKNN(Recommender):
    """``implicit``'s item-item nearest neighbours: ``weighting`` = "cosine" or "bm25"."""

    name = "itemknn"

    def __init__(self, weighting: str = "bm25", neighbours: int = 100, k1: float = 1.2, b: float = 0.75,
                 confidence: str = "binary", **extra):
        if weighting not in ("cosine", "bm25"):
            raise ValueError(f"itemknn weighting must be 'cosine' or 'bm25', got {weighting!r}")
        super().__init__(weighting=weighting, neighbours=neighbours, k1=k1, b=b, confidence=check_scheme(confidence),
                         **extra)

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "ItemKNN":
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        p = self.params
        if p["weighting"] == "bm25":
            model = BM25Recommender(K=int(p["neighbours"]), K1=float(p["k1"]), B=float(p["b"]), num_threads=1)
        else:
            model = CosineRecommender(K=int(p["neighbours"]), num_threads=1)
        X = weigh(interactions, p["confidence"])  # BM25's term frequencies when weighted
        with warnings.catch_warnings():  # implicit's BM25 weighting hands itself a COO matrix and warns
            warnings.simplefilter("ignore")
            model.fit(X, show_progress=False)
        self.similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = X.shape
        return self

    def score(self, users, history):
        history = weigh(align_history(history, self.n_items), self.params["confidence"])
        return np.asarray((history @ self.similarity).toarray(), dtype=np.float32)

    def _arrays(self):
        return {**sparse_arrays("similarity", self.similarity), "known": self.known}

    def _restore(self, arrays):
        self.similarity = sparse_from("similarity", arrays).astype(np.float32)
        self.known = arrays["known"].astype(bool)


class EASE(Recommender):
    """Embarrassingly shallow autoencoder (Steck 2019): ``B = I − P·diag(1/diag P)``, ``P = (XᵀX + λI)⁻¹``.

    Primal form (users ≥ items) keeps the dense ``items × items`` P. Dual form (users < items)
    uses ``P = (I − Xᵀ(XXᵀ + λI)⁻¹X)/λ`` and keeps X and the ``users × users`` inverse instead,
    so memory follows min(users, items). Above ``max_dense_gb`` of dense working memory it
    refuses with a clear error rather than swapping the machine to death.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_dense_gb: float = 4.0, confidence: str = "binary", **extra):
        super().__init__(l2=l2, max_dense_gb=max_dense_gb, confidence=check_scheme(confidence), **extra)

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "EASE":
        X = weigh(interactions, self.params["confidence"])
        n_users, n_items = X.shape
        lam = float(self.params["l2"])
        dim = min(n_users, n_items)
        need_gb = 3 * 8 * dim * dim / 1e9  # gram + inverse (float64) + float32 copy, roughly
        if need_gb > float(self.params["max_dense_gb"]):
            raise MemoryError(
                f"EASE needs a dense {dim}×{dim} matrix (~{need_gb:.1f} GB) for {n_users} users × {n_items} items, "
                f"above its limit max_dense_gb={self.params['max_dense_gb']}; use itemknn or als for data this large"
            )
        self.dual = n_users < n_items
        if not self.dual:
            G = (X.T @ X).toarray().astype(np.float64)
            G[np.diag_indices_from(G)] += lam
            P = np.linalg.inv(G)
            self.P = P.astype(np.float32)
            self.diag_p = np.diag(P).astype(np.float32)
            self.M = np.zeros((0, 0), dtype=np.float32)
            self.X = sp.csr_matrix((0, n_items), dtype=np.float32)
        else:
            K = (X @ X.T).toarray().astype(np.float64)
            K[np.diag_indices_from(K)] += lam
            M = np.linalg.inv(K)
            MX = M @ X.toarray()  # users × items, dense (users < items here)
            diag_xmx = np.asarray(X.multiply(MX).sum(axis=0)).ravel()
            self.diag_p = ((1.0 - diag_xmx) / lam).astype(np.float32)
            self.M = M.astype(np.float32)
            self.X = X
            self.P = np.zeros((0, 0), dtype=np.float32)
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = n_users, n_items
        return self

    def _hp(self, history: sp.csr_matrix) -> np.ndarray:
        if not self.dual:
            return np.asarray(history @ self.P)
        lam = float(self.params["l2"])
        hxt = np.asarray((history @ self.X.T).toarray())  # batch × users
        return (history.toarray() - np.asarray(self.X.T @ (hxt @ self.M).T).T) / lam

    def score(self, users, history):
        history = weigh(align_history(history, self.n_items), self.params["confidence"])
        hp = self._hp(history)
        return (history.toarray() - hp / self.diag_p).astype(np.float32)

    def _arrays(self):
        return {"P": self.P, "diag_p": self.diag_p, "M": self.M, **sparse_arrays("X", self.X),
                "known": self.known, "dual": np.asarray(self.dual)}

    def _restore(self, arrays):
        self.P, self.diag_p, self.M = arrays["P"], arrays["diag_p"], arrays["M"]
        self.X = sparse_from("X", arrays).astype(np.float32)
        self.known = arrays["known"].astype(bool)
        self.dual = bool(arrays["dual"])
