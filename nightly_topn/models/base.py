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

import contextlib
import contextvars
import json
import time
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

    Measured on the 2-core worker (``benchmarks/fit_threads.py``, 3,000 users of the 2M-event
    shape): alone, 2 threads fit 1.6-1.7x faster (multvae 44.3 -> 26.5 s, horizon 40.6 -> 24.9 s);
    with a second fit beside it (a backfill's two active runs) 2 threads each are 1.7x slower than
    1 each (multvae 77.7 vs 44.9 s, horizon 74.5 vs 42.9 s). The count is also part of the result
    (torch splits reductions by thread), so it is fixed per deployment, never chosen from the
    load: 1 by default, raise it on a worker that trains one model at a time.
    """
    import os

    return max(1, int(os.environ.get(TORCH_THREADS_ENV, "1")))


FIT_THREADS_ENV = "NIGHTLY_TOPN_FIT_THREADS"


def fit_threads() -> int:
    """Threads for fits whose result is the same at any thread count (ALS: every user's and item's
    solve is independent; a test checks the factors are identical): ``$NIGHTLY_TOPN_FIT_THREADS``,
    default every core this process may use. BPR's Hogwild updates race and torch splits its
    reductions by thread, so they keep ``torch_threads`` (one fixed count: the same lists on a rerun)."""
    import os

    from nightly_topn.scoring import available_cores

    return max(1, int(os.environ.get(FIT_THREADS_ENV) or available_cores()))


#: When the fit in progress must stop (``time.monotonic()``), or None: set by the search's trials.
_FIT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("fit_deadline", default=None)


@contextlib.contextmanager
def fit_deadline(at: float | None):
    """Fits inside this block stop at ``at`` (monotonic seconds). Iterative models check between
    iterations (implicit) or mini-batches (torch) and keep what they have learnt so far, recording
    how far they got in ``model.stopped_early``. This is how a search trial fits its budget whatever
    the data's size. Models fit in one step (EASE, item-kNN, PureSVD, popularity) do not stop."""
    token = _FIT_DEADLINE.set(at)
    try:
        yield
    finally:
        _FIT_DEADLINE.reset(token)


class OutOfTime(Exception):
    """A fit under a ``fit_deadline`` cannot finish one pass over the data before it."""


#: Seconds of mini-batches an epoch-based fit times before judging whether one epoch fits.
FIRST_PASS_PROBE_SECONDS = 1.0


def time_is_up() -> bool:
    """Whether the fit in progress has passed its ``fit_deadline`` (never outside one)."""
    at = _FIT_DEADLINE.get()
    return at is not None and time.monotonic() >= at


#: Floats in one block of users × items while a torch model scores: ``torch_scores`` runs the
#: forward pass on row blocks this big (at 27K items ~155 users), so its temporaries stay a few
#: such blocks whatever the batch size; the result is the one ``batch × items`` float32 array.
TORCH_SCORE_BLOCK = 1 << 22


def torch_scores(modules, n_rows: int, n_items: int, block) -> np.ndarray:
    """``n_rows × n_items`` float32 scores, ``block(lo, hi)`` (a tensor for rows ``lo:hi``) filled in
    row blocks of ``TORCH_SCORE_BLOCK`` floats, with ``modules`` in eval mode under ``inference_mode``."""
    import torch

    for module in modules:
        module.eval()
    out = np.empty((n_rows, n_items), dtype=np.float32)
    target, step = torch.from_numpy(out), max(1, TORCH_SCORE_BLOCK // max(n_items, 1))
    with torch.inference_mode():
        for lo in range(0, n_rows, step):
            hi = min(lo + step, n_rows)
            target[lo:hi] = block(lo, hi)
    return out


def torch_rows(rows: sp.csr_matrix):
    """CSR rows as ``(items, offsets, weights)`` tensors, each row's weights L2-normalised: the input
    of an ``nn.EmbeddingBag(mode="sum")`` first layer, a linear layer on the sparse history. It costs
    ``nnz × hidden``, not ``rows × items × hidden`` as on a dense input (measured ~45x less at 27K
    items and 0.5 % density), and needs no dense ``rows × items`` copy, in training and scoring alike."""
    import torch

    rows = sp.csr_matrix(rows, dtype=np.float32)
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1), dtype=np.float32).ravel())
    weights = rows.data / np.repeat(np.where(norms > 0, norms, 1.0), np.diff(rows.indptr))
    return (torch.from_numpy(rows.indices.astype(np.int64)), torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
            torch.from_numpy(weights.astype(np.float32, copy=False)))


def state_arrays(modules) -> dict[str, np.ndarray]:
    """The torch ``modules``' ``state_dict``s as plain arrays for the npz: ``m0.enc1.weight``, ..."""
    return {f"m{m}.{key}": value.detach().cpu().numpy() for m, module in enumerate(modules)
            for key, value in module.state_dict().items()}


def load_states(modules, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of ``state_arrays`` into freshly built ``modules``, strict: a missing array is a
    ``KeyError``, an unexpected one or one of another shape a ``ValueError`` naming it."""
    import re

    import torch

    prefix = re.compile(r"m\d+\.")
    expected = {f"m{m}.{key}": (m, key, tensor) for m, module in enumerate(modules)
                for key, tensor in module.state_dict().items()}
    extra = sorted(k for k in arrays if prefix.match(k) and k not in expected)
    if extra:
        raise ValueError(f"unexpected arrays {extra[:3]} for {len(modules)} network(s)")
    states = [{} for _ in modules]
    for name, (m, key, tensor) in expected.items():
        value = arrays[name]
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, the network needs {tuple(tensor.shape)}")
        states[m][key] = torch.from_numpy(np.ascontiguousarray(value))
    for module, state in zip(modules, states):
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # e.g. a dtype torch cannot copy; one line, like the checks above
            raise ValueError(f"cannot load the network's state: {str(exc).strip().splitlines()[-1].strip()}") from exc


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
        #: ``{"done": k, "planned": n, "unit": "iterations"|"epochs"}`` when the last fit stopped at its
        #: ``fit_deadline`` after k of its n passes; None when it ran to the end.
        self.stopped_early: dict | None = None

    def _stop_here(self, done: float, planned: int, unit: str) -> bool:
        """Record and return whether the fit must stop now, after ``done`` of ``planned`` passes.

        An epoch-based fit (torch) whose first epoch, at the pace of its first second of
        mini-batches, would end after the deadline, or that reaches the deadline inside its first
        epoch, raises ``OutOfTime`` instead: a fraction of an epoch is no model, and scoring it
        would spend what is left of the budget for nothing."""
        at = _FIT_DEADLINE.get()
        if at is None:
            return False
        now = time.monotonic()
        if unit == "epochs" and done < 1:
            origin = getattr(self, "_first_pass", None)
            if origin is None or origin[2] != at:
                self._first_pass = (now, float(done), at)
            elif now - origin[0] >= FIRST_PASS_PROBE_SECONDS and done > origin[1]:
                epoch = (now - origin[0]) / (done - origin[1])
                if now + (1.0 - done) * epoch > at:
                    raise OutOfTime(f"one epoch of {self.name} would take ~{epoch:.0f} s, more than the "
                                    f"{max(0.0, at - origin[0]):.1f} s left of its share of tuning_budget_seconds")
        if now < at:
            return False
        if unit == "epochs" and done < 1:  # the deadline came before the pace could be judged
            raise OutOfTime(f"{self.name} reached the end of its share of tuning_budget_seconds "
                            f"{round(float(done), 2)} epochs into its first epoch")
        self.stopped_early = {"done": round(float(done), 2), "planned": int(planned), "unit": unit}
        return True

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


def load_model(directory) -> Recommender:
    """Load a model saved by ``Recommender.save`` (arrays with ``allow_pickle=False``). A model
    on an object store is copied to a temporary directory first (``np.load`` reads local files);
    messages name the original path."""
    from nightly_topn.storage import as_path, is_remote, local_directory

    path = as_path(directory)
    if not is_remote(path):
        return _load_local(path)
    with local_directory(path) as local:
        return _load_local(local, shown=path)


def _load_local(directory: Path, shown=None) -> Recommender:
    """Load a model saved by ``Recommender.save`` (arrays with ``allow_pickle=False``).

    Every problem with the files (missing, truncated, not an npz archive, metadata that is not
    ours, arrays of the wrong names or shapes) is ``BadInput`` with one line naming the file, e.g.
    ``cannot load model /r/models/dt=D/final/als/model.npz: truncated or not an npz archive
    (zipfile.BadZipFile: File is not a zip file)``; the original exception is its ``__cause__``.
    The arrays must fit ``model.json``: the model scores a probe batch to ``n_items`` columns.
    """
    import zipfile

    from nightly_topn.errors import BadInput, cause_of
    from nightly_topn.models import MODELS

    directory = Path(directory)
    meta_path, arrays_path = directory / META_FILE, directory / ARRAYS_FILE

    def bad(path: Path, problem: str, exc: BaseException | None = None) -> BadInput:
        if shown is not None:
            path = f"{shown}/{Path(path).name}"
        return BadInput(f"cannot load model {path}: {problem}" + (f" ({cause_of(exc)})" if exc is not None else ""))

    try:
        meta = json.loads(meta_path.read_text())
        name, params = meta["name"], dict(meta["params"])
        n_items, n_users = int(meta["n_items"]), meta.get("n_users")
        n_users = None if n_users is None else int(n_users)  # None: saved before model.json had it
    except FileNotFoundError as exc:
        raise bad(meta_path, "the file is missing") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise bad(meta_path, "not the metadata of a saved model", exc) from exc
    if not isinstance(name, str) or name not in MODELS:
        raise bad(meta_path, f"unknown model {name!r}; known: {sorted(MODELS)}")
    try:
        model = MODELS[name](**params)
    except (TypeError, ValueError) as exc:
        raise bad(meta_path, f"params that {name} does not accept", exc) from exc
    try:
        with open(arrays_path, "rb") as handle:
            head = handle.read(4)
    except FileNotFoundError as exc:
        raise bad(arrays_path, "the file is missing") from exc
    except OSError as exc:
        raise bad(arrays_path, "unreadable", exc) from exc
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's first local header, or an empty zip
        raise bad(arrays_path, "not an npz archive (no zip header)" if head else "empty file, not an npz archive")
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise bad(arrays_path, "truncated or not an npz archive", exc) from exc
    except (OSError, ValueError, TypeError) as exc:
        raise bad(arrays_path, "unreadable npz archive", exc) from exc
    model.n_items, model.n_users = n_items, n_users or 0
    try:
        model._restore(arrays)
        _probe(model, check_users=n_users is not None)
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        shape = f"{name}, {'unknown' if n_users is None else n_users} users × {n_items} items"
        raise bad(arrays_path, f"arrays missing or of the wrong shape for {META_FILE} ({shape})", exc) from exc
    return model


def _probe(model: Recommender, *, check_users: bool = True) -> None:
    """Raise ``ValueError`` unless the restored arrays fit the model's ``n_users × n_items``: the
    trained-user flags have one entry per user, and scoring a trained and a new user (history:
    the first and last item) gives ``2 × n_items`` scores. Cheap (two rows), runs at every load."""
    known = getattr(model, "known", None)
    if check_users and known is not None and len(known) != model.n_users:
        raise ValueError(f"'known' has {len(known)} users")
    if model.n_items <= 0:
        return
    items = sorted({0, model.n_items - 1})
    history = sp.csr_matrix((np.ones(2 * len(items), dtype=np.float32), items * 2, [0, len(items), 2 * len(items)]),
                            shape=(2, model.n_items))
    users = np.array([max(model.n_users - 1, 0), model.n_users])
    shape = np.shape(model.score(users, history))
    if shape != (2, model.n_items):
        raise ValueError(f"scoring a probe batch gave shape {shape}, not (2, {model.n_items})")
