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


#: EASE computes in float64 while its dense matrix has at most this many elements (≤ 1 GB), in
#: float32 above: half the memory, and the closed form's relative error stays ~1e-6 (a test).
FLOAT64_MAX_ELEMENTS = 11_000 ** 2
#: Rows of the Gram matrix built per sparse product (the product of a whole catalogue can hold
#: most item pairs: as sparse it would cost more than the dense result).
GRAM_BLOCK = 2048


def dense_gram(A: sp.csr_matrix, dtype) -> np.ndarray:
    """``A Aᵀ`` as a dense C-ordered array, ``GRAM_BLOCK`` rows at a time."""
    At = sp.csc_matrix(A.T)
    out = np.empty((A.shape[0], A.shape[0]), dtype=dtype)
    for lo in range(0, A.shape[0], GRAM_BLOCK):
        out[lo:lo + GRAM_BLOCK] = (A[lo:lo + GRAM_BLOCK] @ At).toarray()
    return out


def invert_spd(A: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite ``A``, written into ``A`` (torch's Cholesky
    factorisation and ``cholesky_inverse`` with ``out=``; measured: one workspace copy of ``A`` at
    the peak). scipy's ``potrf`` is in place but its bundled OpenBLAS segfaulted at 27,000 rows
    (26,000 passed), so it is not used."""
    import torch

    T = torch.from_numpy(A)
    _, info = torch.linalg.cholesky_ex(T, out=(T, torch.empty((), dtype=torch.int32)))
    if int(info):
        raise np.linalg.LinAlgError(f"EASE: the regularised Gram matrix is not positive definite (at row {int(info)})")
    torch.cholesky_inverse(T, out=T)
    return A


#: EASE's default memory limit: the MovieLens-20M catalogue (27,000 items, 140,000 users) is
#: estimated at 7.03 GB and measured at 6.13 GB (fit in 102 s): ``python benchmarks/ease_memory.py
#: --items 27000 --users 140000``; it fits beside the rest of the train job within 8 GiB.
DEFAULT_MAX_DENSE_GB = 7.5
#: What importing torch for the factorisation adds to a process that had not loaded it.
TORCH_BYTES = 300 * 2**20


def ease_peak_bytes(n_users: int, n_items: int) -> int:
    """What ``EASE.fit`` holds at its peak beyond its input: the dense matrix it inverts
    (``min(users, items)``² elements, float64 up to ``FLOAT64_MAX_ELEMENTS`` else float32) and the
    factorisation's workspace copy of it (``invert_spd``), the dual form's ``users × items``
    product, one block of the Gram product, and torch itself. ``benchmarks/ease_memory.py`` compares it with
    measured peaks."""
    dim = min(n_users, n_items)
    size = 8 if dim * dim <= FLOAT64_MAX_ELEMENTS else 4
    dense = 2 * dim * dim * size
    dual = n_users * n_items * size if n_users < n_items else 0
    return dense + dual + min(GRAM_BLOCK, dim) * dim * (size + 12) + TORCH_BYTES


class EASE(Recommender):
    """Embarrassingly shallow autoencoder (Steck 2019): ``B = I − P·diag(1/diag P)``, ``P = (XᵀX + λI)⁻¹``.

    Primal form (users ≥ items) keeps the dense ``items × items`` P. Dual form (users < items)
    uses ``P = (I − Xᵀ(XXᵀ + λI)⁻¹X)/λ`` and keeps X and the ``users × users`` inverse instead,
    so memory follows min(users, items). The dense matrix is built block by block and inverted
    by Cholesky into its own memory, in float32 for large catalogues (2.9 GB at 27K items, plus
    the factorisation's workspace copy). Above
    ``max_dense_gb`` of estimated peak (``ease_peak_bytes``) it refuses with a clear error rather
    than swapping the machine to death.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_dense_gb: float = DEFAULT_MAX_DENSE_GB, confidence: str = "binary",
                 **extra):
        super().__init__(l2=l2, max_dense_gb=max_dense_gb, confidence=check_scheme(confidence), **extra)

    def fit(self, interactions: sp.csr_matrix, times: sp.csr_matrix | None = None) -> "EASE":
        X = sp.csr_matrix(weigh(interactions, self.params["confidence"]))
        n_users, n_items = X.shape
        lam = float(self.params["l2"])
        dim = min(n_users, n_items)
        need_gb = ease_peak_bytes(n_users, n_items) / 1e9
        if need_gb > float(self.params["max_dense_gb"]):
            raise MemoryError(
                f"EASE needs a dense {dim}×{dim} matrix (~{need_gb:.1f} GB at its peak) for {n_users} users × "
                f"{n_items} items, above its limit max_dense_gb={self.params['max_dense_gb']}; use itemknn or als "
                f"for data this large"
            )
        dtype = np.float64 if dim * dim <= FLOAT64_MAX_ELEMENTS else np.float32
        self.dual = n_users < n_items
        if not self.dual:
            P = dense_gram(sp.csr_matrix(X.T), dtype)
            P[np.diag_indices_from(P)] += lam
            invert_spd(P)
            self.diag_p = np.diag(P).astype(np.float32)
            self.P = P.astype(np.float32, copy=False)
            self.M = np.zeros((0, 0), dtype=np.float32)
            self.X = sp.csr_matrix((0, n_items), dtype=np.float32)
        else:
            M = dense_gram(X, dtype)
            M[np.diag_indices_from(M)] += lam
            invert_spd(M)
            MX = np.asarray(sp.csr_matrix(X.T, dtype=dtype) @ M).T  # (M X): users × items, dense
            diag_xmx = np.asarray(X.multiply(MX).sum(axis=0)).ravel()
            del MX
            self.diag_p = ((1.0 - diag_xmx) / lam).astype(np.float32)
            self.M = M.astype(np.float32, copy=False)
            self.X = X
            self.P = np.zeros((0, 0), dtype=np.float32)
        self.known = np.diff(X.indptr) > 0
        self.n_users, self.n_items = n_users, n_items
        return self

    #: The dense dimensions the cost probe fits at (``estimate_fit_seconds``): a small one for the
    #: fixed cost, two larger ones for how the rest grows.
    PROBE_DIMS = (300, 1500, 3000)

    def estimate_fit_seconds(self, interactions: sp.csr_matrix) -> float:
        """Seconds ``fit`` would take on ``interactions``. Extrapolated from fits of the same
        configuration on the most popular items (and as many users, in the dual form) at three dense
        dimensions: the smallest gives the fixed cost, the growth of the rest between the other two
        (clipped to between quadratic and cubic: the dense product and its inversion) carries the
        largest to the data's dimension. The search asks before EASE's one-step fit, which cannot
        stop at a deadline. 0 when the data is no larger than the probes."""
        import time

        X = sp.csr_matrix(interactions)
        n_users, n_items = X.shape
        dim = min(n_users, n_items)
        _, mid, high = self.PROBE_DIMS
        if dim <= 2 * high:
            return 0.0
        by_count = np.argsort(-np.diff(sp.csc_matrix(X).indptr), kind="stable")
        users = np.random.default_rng(0).permutation(n_users)
        seconds = []
        for k in self.PROBE_DIMS:
            sub = X[:, np.sort(by_count[:k])]
            if n_users < n_items:  # dual form: the dense side is the users'
                sub = sub[np.sort(users[:k])]
            started = time.perf_counter()
            type(self)(**self.params).fit(sub)
            seconds.append(time.perf_counter() - started)
        fixed, middle, large = seconds[0], max(seconds[1] - seconds[0], 1e-6), max(seconds[2] - seconds[0], 1e-6)
        growth = float(np.clip(np.log(large / middle) / np.log(high / mid), 2.0, 3.0))
        return fixed + large * (dim / high) ** growth

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
