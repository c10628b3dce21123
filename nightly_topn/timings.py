"""Where a day's time went: each job's wall seconds and peak memory, as ``jobs.run_job`` ran it.

``reports/dt=D/timings.json`` holds one entry per job of the date (a rerun replaces its entry):
seconds, outcome, the run it belonged to, and the peak resident memory of the process that ran
it and of its largest child (Beam's worker processes; in one process running several jobs, the
peak so far). The run report (written by ``evaluate``) shows the jobs before it; the file has
them all. Written under the date's lock (``run_job``), so concurrent runs cannot interleave.
"""
from __future__ import annotations

import datetime as dt
import resource

from nightly_topn.errors import BadInput
from nightly_topn.storage import Storage, read_json, write_json

FILE = "timings.json"


def peak_rss_mib() -> tuple[int, int]:
    """Peak resident memory so far of this process and of its largest waited-for child, MiB."""
    to_mib = 1 / 1024  # Linux reports ru_maxrss in KiB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mib
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mib
    return round(own), round(child)


def record(store: Storage, date, job: str, *, seconds: float, outcome: str, run_id: str | None) -> dict:
    """Add (or replace) ``job``'s entry in the date's timings; returns it."""
    own, child = peak_rss_mib()
    entry = {"seconds": round(seconds, 2), "outcome": outcome, "run_id": run_id, "peak_rss_mib": own,
             "largest_child_rss_mib": child,
             "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = store.partition("reports", date) / FILE
    entries = read(store, date)
    entries[job] = entry
    write_json(path, entries)
    return entry


def read(store: Storage, date) -> dict[str, dict]:
    """The date's entries by job name (empty before any job, or if the file is unreadable)."""
    path = store.partition("reports", date) / FILE
    if not path.is_file():
        return {}
    try:
        entries = read_json(path)
    except BadInput:
        return {}
    return entries if isinstance(entries, dict) else {}
