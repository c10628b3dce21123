"""A/B arms: which users get the challenger's lists instead of the champion's.

An experiment names a challenger model (``challenger_model``), the share of users it serves
(``challenger_share``) and a name (``experiment``, default ``ab``). The
assignment is a pure function of the user id and the experiment name, so it is the same every
night, in every process and in any language, and a user never switches arms while the
experiment runs (renaming the experiment reshuffles everybody)::

    bucket(user) = first 8 bytes of SHA-256("<experiment>:<user_id>" as UTF-8), big-endian,
                   divided by 2**64                      (uniform in [0, 1))
    arm(user)    = "challenger" if bucket(user) < challenger_share else "champion"

Raising the share only moves champion users to the challenger (a user's bucket never changes).
The top-N pipeline scores each user with their arm's model and writes the arm into the lists
(column ``arm``); the lookup, the Redis load and the HTTP service return it with the list, and
the rolling evaluation scores each arm's lists separately. Users neither model can score get the
popularity fallback in both arms (``source = "fallback"``), still labelled with their arm.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"
ARMS = (CHAMPION, CHALLENGER)


def buckets(user_ids: Iterable[str], experiment: str) -> np.ndarray:
    """Each user's bucket in [0, 1): SHA-256 of ``experiment:user_id``, first 8 bytes / 2**64."""
    prefix = f"{experiment}:".encode()
    digests = b"".join(hashlib.sha256(prefix + str(u).encode()).digest()[:8] for u in user_ids)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


def in_challenger(user_ids: Iterable[str], experiment: str, share: float) -> np.ndarray:
    """Boolean mask: which of ``user_ids`` are in the challenger arm (``share`` of them, in expectation)."""
    ids = list(user_ids)
    if share <= 0 or not ids:
        return np.zeros(len(ids), dtype=bool)
    return buckets(ids, experiment) < share


def arm_of(user_id: str, experiment: str, share: float) -> str:
    """One user's arm (what the lists say for a listed user; for anyone else, their arm-to-be)."""
    return CHALLENGER if in_challenger([user_id], experiment, share)[0] else CHAMPION


def admitted(store, date, info: dict) -> dict | None:
    """The A/B challenger ``evaluate`` admitted for ``date`` (``evaluation.json["experiment"]``:
    active, it passed the quality gate on the holdout, and it is tonight's trained challenger of
    ``info``, the model info), else None. The top-N job scores its arm only then, and the top-N
    gate checks the lists' arms against it: nothing unchecked reaches a user."""
    from nightly_topn.registry import EVALUATION_FILE
    from nightly_topn.storage import read_json

    challenger = info.get("challenger") or {}
    if not challenger.get("active"):
        return None
    path = store.partition("reports", date) / EVALUATION_FILE
    verdict = (read_json(path) if path.is_file() else {}).get("experiment") or {}
    if verdict.get("active") and verdict.get("model_version") == challenger["model_version"]:
        return verdict
    return None
