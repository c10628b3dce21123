"""The model registry on disk: what was trained each night, on what, how well, and what is live.

Per run (``models/dt=D/``):

* ``registry.json`` — per candidate model: chosen params, validation metric and every tuning
  trial, artifact paths, data fingerprint, code version; which one won and why.
* ``eval/<model>/`` (fit on the evaluation train split) and ``final/<winner>``, ``final/popularity``
  (fit on all prepared data) — the artifacts (npz + JSON).

The evaluation job adds ``reports/dt=D/evaluation.json`` (holdout metrics of every candidate,
the quality gate's decision). ``champion()`` follows the published pointer back to the run
that produced the live lists; ``history()`` reads the last runs for the report's trend plots.
"""
from __future__ import annotations

import datetime as dt
import functools
import subprocess
from pathlib import Path

from nightly_topn import __version__
from nightly_topn.errors import BadInput
from nightly_topn.storage import Storage, as_date, as_path, read_json, write_json

REGISTRY_FILE = "registry.json"
INFO_FILE = "model_info.json"
EVALUATION_FILE = "evaluation.json"  # reports/dt=D/, written by the evaluate job


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree when available (``+dirty`` if modified)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    if not commit:
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def _read(path: Path) -> dict:
    """A registry file; a corrupt one is ``BadInput`` naming it (``read_json`` raises that)."""
    record = read_json(path)
    if not isinstance(record, dict):
        raise BadInput(f"{path} is not a JSON object (a {type(record).__name__})")
    return record


def write_run(directory: Path, record: dict) -> None:
    write_json(as_path(directory) / REGISTRY_FILE, record)


def read_run(store: Storage, date) -> dict | None:
    path = store.partition("models", date) / REGISTRY_FILE
    return _read(path) if path.is_file() else None


def model_info(store: Storage, date, *, required: bool = False) -> dict | None:
    """``models/dt=D/model_info.json``: the winner, its params and version (what top-N loads).
    Missing: None, or ``MissingPartition`` naming the file when ``required``."""
    path = store.partition("models", date) / INFO_FILE
    return _read(path) if required or path.is_file() else None


def write_model_info(directory: Path, info: dict) -> None:
    write_json(as_path(directory) / INFO_FILE, info)


def champion(store: Storage, before=None) -> dict | None:
    """The live model: ``{"date", "model", "params", "model_version"}`` of the run whose lists are published.

    ``before``: ignore a pointer at or after this date (the run being evaluated is never its own champion).
    """
    pointer = store.published()
    if not pointer:
        return None
    date = as_date(pointer["date"])
    if before is not None and date >= as_date(before):
        return None
    info = model_info(store, date)
    if not info:
        return None
    return {"date": date.isoformat(), "model": info["model"], "params": info.get("params", {}),
            "model_version": info.get("model_version", pointer.get("model_version"))}


def history(store: Storage, until, n: int = 30) -> list[dict]:
    """The last ``n`` evaluation reports up to and including ``until``, oldest first."""
    until = as_date(until)
    days = [day for day in store.dates("reports", holding=EVALUATION_FILE) if day <= until]
    return [_read(store.partition("reports", day) / EVALUATION_FILE) for day in days[-n:]]


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
