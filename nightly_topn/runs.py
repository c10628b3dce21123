"""One run per date at a time: a lock per date, and a claim naming the run that owns the date.

Every job of date D runs under D's file lock (``runs/dt=D.lock``), so two jobs of one date never
write at the same time. A run (an Airflow DAG run, or one ``nightly-topn run``) claims D when its
first job starts (``runs/dt=D.json``); the newest claim wins. A run whose claim was taken by a
later run of the same date stops at its next job with ``RunInProgress``, so the later run sees
only its own partitions and the two never interleave (a manual trigger during the scheduled
run: the manual one carries on, the scheduled one ends with a message). A killed run's claim
needs no cleanup: the next run of the date simply takes it. Under the lock, what killed writers
of the date left (staging folders, temporary files) is swept.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from contextlib import contextmanager

from nightly_topn.errors import RunInProgress
from nightly_topn.storage import Storage, as_date, read_json, write_json

log = logging.getLogger(__name__)
#: How long a job waits for another job of the same date (the tasks' execution timeout).
LOCK_TIMEOUT_SECONDS = 2 * 3600


def lock_path(store: Storage, date):
    """``runs/dt=D.lock``: a file lock on a local root, a lease object on an object store (``Storage.lock``)."""
    return store.root / "runs" / f"dt={as_date(date).isoformat()}.lock"


def claim_path(store: Storage, date):
    return store.root / "runs" / f"dt={as_date(date).isoformat()}.json"


def current_claim(store: Storage, date) -> dict | None:
    path = claim_path(store, date)
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:
        return None  # a torn claim (never written by write_json) counts as no claim


@contextmanager
def date_guard(date, *, root=None, run_id: str | None = None, claim: bool = False,
               timeout: float = LOCK_TIMEOUT_SECONDS):
    """Hold ``date``'s lock for one job. With ``run_id``: ``claim`` makes this run the owner of
    the date (its first job); otherwise the job refuses (``RunInProgress``) if a later run owns
    it. Without ``run_id`` (a job run by hand) only the lock is taken."""
    store = Storage.at(root)
    day = as_date(date)
    with store.lock(f"dt={day.isoformat()}", timeout):
        if run_id:
            owner = current_claim(store, day)
            if claim or owner is None:
                write_json(claim_path(store, day), {
                    "run_id": run_id, "date": day.isoformat(), "host": os.uname().nodename, "pid": os.getpid(),
                    "claimed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
                if owner and owner.get("run_id") != run_id:
                    log.warning("run %s takes over %s from run %s", run_id, day, owner.get("run_id"))
            elif owner.get("run_id") != run_id:
                raise RunInProgress(
                    f"run {run_id} of {day} stops: run {owner.get('run_id')} started later "
                    f"({owner.get('claimed_at')}) and now owns the date ({claim_path(store, day)}); "
                    "nothing of this run will be published")
        swept = store.sweep_stale(day)
        if swept:
            log.info("swept %d leftover(s) of killed writers of %s: %s", len(swept), day,
                     ", ".join(p.name for p in swept[:5]))
        yield store
