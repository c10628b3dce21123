"""Shared fixtures: a small generated universe, a private storage root, and a day-runner."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

PROJECT = Path(__file__).resolve().parent.parent
ML100K = (PROJECT / ".." / "shared" / "datasets" / "ml-100k").resolve()
#: A small universe (a few hundred users) so a whole day runs in seconds.
SMALL_SOURCE = "generated:seed=3,base_users=400,users_per_day=6,base_items=150,items_per_day=2"
SMALL_WINDOW = 21


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A fresh storage root, also exported as $NIGHTLY_TOPN_ROOT for code that reads the env."""
    path = tmp_path / "data"
    monkeypatch.setenv("NIGHTLY_TOPN_ROOT", str(path))
    return path


def run_day(date, root, *, source=SMALL_SOURCE, until="publish", **overrides):
    """Run the jobs of one day in order up to and including ``until``; returns each job's result."""
    from nightly_topn.config import RunParams
    from nightly_topn.jobs import run_day as run_jobs

    # ALS unless a test asks otherwise: these tests are about the jobs, not model selection.
    params = RunParams.from_mapping({"train_window_days": SMALL_WINDOW, "top_n": 10, "model": "als", **overrides})
    results = {}
    for name, result in run_jobs(date, root=root, source=source, params=params):
        results[name] = result
        if name == until:
            break
    return results


@pytest.fixture(scope="session")
def ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.fail(f"MovieLens 100K is expected at {ML100K} (shared/datasets/ml-100k beside the project)")
    return ML100K
