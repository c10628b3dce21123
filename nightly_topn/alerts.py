"""Failure alerts a person can read: one JSON file per failed task, an append-only log, the task log.

Where (under the storage root)::

    alerts/dt=YYYY-MM-DD/TASK.try-N.json    one alert per failed task attempt of that run date
    alerts/alerts.jsonl                     every alert, one JSON object per line (tail -f it)

Each alert names the run date, the DAG, run and task, the attempt, the exception type and
message (the reason), and the log URL when Airflow knows it. ``record_failure`` is the DAG's
``on_failure_callback``: it runs once a task has failed for good (no retry left) and never raises,
so a broken alert sink cannot hide the original failure.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from pathlib import Path

from nightly_topn.storage import Storage, append_line, as_date, read_text, write_json

log = logging.getLogger(__name__)
ALERT_LOG = "alerts.jsonl"


def alert_payload(*, date, dag_id: str, run_id: str, task_id: str, try_number, reason: BaseException | str | None,
                  log_url: str | None = None) -> dict:
    if isinstance(reason, BaseException):
        kind, message = type(reason).__name__, str(reason)
    else:
        kind, message = "unknown", str(reason or "no exception recorded (killed, timed out or upstream failed)")
    return {
        "date": as_date(date).isoformat() if date else None,
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "try_number": try_number,
        "error_type": kind,
        "reason": message,
        "log_url": log_url,
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_alert(alert: dict, *, root=None) -> Path:
    """Persist one alert (per-date file + a line in the append-only log); returns the file."""
    store = Storage.at(root)
    base = store.root / "alerts"
    folder = store.partition("alerts", alert["date"]) if alert.get("date") else base / "undated"
    path = folder / f"{alert['task_id']}.try-{alert['try_number']}.json"
    write_json(path, alert)
    # one write per line: concurrent runs append to the same log (a file lock locally; on an
    # object store ``append_line``'s conditional writes)
    line = json.dumps(alert, sort_keys=True, default=str)
    if store.remote:
        append_line(base / ALERT_LOG, line)
    else:
        from filelock import FileLock

        base.mkdir(parents=True, exist_ok=True)
        with FileLock(str(base / f"{ALERT_LOG}.lock")):
            append_line(base / ALERT_LOG, line)
    return path


def read_alerts(root=None, date=None) -> list[dict]:
    """Alerts from the log, oldest first (optionally only those of ``date``)."""
    path = Storage.at(root).root / "alerts" / ALERT_LOG
    if not path.is_file():
        return []
    alerts = [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
    if date is not None:
        alerts = [a for a in alerts if a.get("date") == as_date(date).isoformat()]
    return alerts


def record_failure(context, date_rule=None) -> None:
    """Airflow ``on_failure_callback``: write the alert and log it; never raises.

    ``date_rule(context)`` gives the run date when the ``ingest`` task did not get to return it.
    """
    try:
        ti = context["ti"]
        date = _date_of(context, date_rule)
        alert = alert_payload(date=date, dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                              try_number=getattr(ti, "try_number", None), reason=context.get("exception"),
                              log_url=getattr(ti, "log_url", None))
        path = write_alert(alert)
        log.error("ALERT nightly_topn %s task %s failed: %s: %s (alert written to %s)", alert["date"],
                  alert["task_id"], alert["error_type"], alert["reason"], path)
    except Exception:  # noqa: BLE001 - the alert sink must not mask the task's own failure
        log.error("could not record the failure alert:\n%s", traceback.format_exc())


def _date_of(context, date_rule=None) -> str | None:
    """The run date of a failed task: the ``ingest`` result if it got that far, else the date rule."""
    try:
        date = context["ti"].xcom_pull(task_ids="ingest")
        if isinstance(date, str):
            return as_date(date).isoformat()
    except Exception:  # noqa: BLE001 - ingest itself failed, or no XCom reachable
        pass
    try:
        return date_rule(context) if date_rule else None
    except Exception:  # noqa: BLE001
        return None
