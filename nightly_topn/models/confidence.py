"""How a model weighs its input: the confidence transform, one knob of every model's search.

preprocess turns events into a confidence per (user, item) pair (event-type weights times the
event's own weight, summed; optionally decayed by age). What a model should make of it
differs by model and by data, so each model takes a ``confidence`` knob, chosen on validation
like any other hyperparameter:

* ``binary``: every pair is 1 (the signal is *that* the user interacted);
* ``log``: ``log1p(confidence)`` (repeats and strong events count more, with diminishing
  returns: the shape Hu, Koren & Volinsky 2008 recommend for counts);
* ``linear``: the confidence as it is (what ALS's ``1 + alpha * r`` was designed around).

The same transform applies to the training matrix and to every history row scored later
(fold-in, item-item products), so a saved model weighs tomorrow's history as it weighed its
training data. Evaluation never uses it: a held-out pair is one positive, whatever its weight.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SCHEMES = ("binary", "log", "linear")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"confidence must be one of {SCHEMES}, got {scheme!r}")
    return scheme


def weigh(matrix: sp.spmatrix, scheme: str = "binary") -> sp.csr_matrix:
    """``matrix`` (``users × items`` confidences, every stored entry a positive) as float32 CSR
    weighted by ``scheme``; entries that are not positive are dropped."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.data[~(out.data > 0)] = 0  # NaN and non-positive confidences carry no positive
    out.eliminate_zeros()
    if scheme == "binary":
        out.data[:] = 1.0
    elif scheme == "log":
        np.log1p(out.data, out=out.data)
    elif scheme != "linear":
        check_scheme(scheme)
    return out
