"""The jobs of a daily run, in order. Each is a plain function ``job(date, *, root, params, ...)``
that an Airflow task calls and a person can run by hand (``nightly-topn JOB --date D``).

``run_job`` is how every entry point (the DAG's tasks, the CLI) runs one: under the date's
lock, as part of a run that owns the date (``nightly_topn.runs``). ``run_day`` runs them all in
order, handing the exact top-N version from ``topn`` to ``validate_topn`` and on to ``publish``.
"""
from __future__ import annotations

import time
import uuid


def steps():
    """``[(name, function)]`` in run order (imported lazily: DAG parsing must stay light)."""
    from nightly_topn.jobs.evaluate import evaluate
    from nightly_topn.jobs.ingest import ingest
    from nightly_topn.jobs.preprocess import preprocess
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.rolling_eval import rolling_eval
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.train import train
    from nightly_topn.jobs.similar import publish_similar, similar
    from nightly_topn.jobs.validate import validate_features, validate_raw, validate_similar, validate_topn

    return [("ingest", ingest), ("validate", validate_raw), ("rolling_eval", rolling_eval), ("preprocess", preprocess),
            ("validate_features", validate_features), ("train", train), ("evaluate", evaluate), ("topn", topn),
            ("validate_topn", validate_topn), ("publish", publish), ("similar", similar),
            ("validate_similar", validate_similar), ("publish_similar", publish_similar)]


def preflight(params) -> None:
    """Refuse, before any work, what the run may not choose on this deployment: its Beam knobs
    against the deployment's runner and this machine's cores, its quality-gate knobs against the
    deployment's limits."""
    from nightly_topn.config import deployment_beam_args
    from nightly_topn.quality import check_gate_knobs

    params.run_beam_args(deployment_beam_args())
    check_gate_knobs(params)


def run_job(name: str, date, *, root=None, params=None, run_id: str | None = None, **kwargs) -> dict:
    """Run job ``name`` for ``date`` under the date's guard. ``run_id`` names the run it belongs
    to (``ingest`` claims the date for it); without one (a job by hand) only the lock is taken."""
    from nightly_topn.config import RunParams
    from nightly_topn.runs import date_guard
    from nightly_topn.storage import as_date

    params = params or RunParams()
    date = as_date(date)
    job = dict(steps())[name]
    with date_guard(date, root=root, run_id=run_id, claim=name == "ingest"):
        started, outcome = time.perf_counter(), "failed"
        try:
            result = job(date, root=root, params=params, **kwargs)
            outcome = "ok"
            return result
        finally:  # where the day's time went (reports/dt=D/timings.json), failures included
            _record_time(root, date, name, time.perf_counter() - started, outcome, run_id)


def _record_time(root, date, name: str, seconds: float, outcome: str, run_id: str | None) -> None:
    import logging

    from nightly_topn import timings
    from nightly_topn.storage import Storage

    try:
        timings.record(Storage.at(root), date, name, seconds=seconds, outcome=outcome, run_id=run_id)
    except OSError as exc:  # never fail (or mask the failure of) a job over its timing note
        logging.getLogger(__name__).warning("could not record %s's time for %s: %s", name, date, exc)


def run_day(date, *, root=None, source=None, params=None, run_id: str | None = None):
    """Run every job of ``date`` in order as one run; yields ``(name, result)`` after each."""
    from nightly_topn.config import RunParams

    params = params or RunParams()
    preflight(params)
    run_id = run_id or f"cli__{uuid.uuid4().hex[:12]}"
    versions = {}  # what topn / similar wrote: the gate and publish after them take exactly it
    for name, _ in steps():
        kwargs = {}
        if name == "ingest":
            kwargs["source"] = source
        if name in ("validate_topn", "publish"):
            kwargs["version"] = versions.get("topn")
        if name in ("validate_similar", "publish_similar"):
            kwargs["version"] = versions.get("similar")
        result = run_job(name, date, root=root, params=params, run_id=run_id, **kwargs)
        if name in ("topn", "similar"):
            versions[name] = result["path"]
        yield name, result
