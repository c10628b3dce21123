"""Rollback: put the previously published lists back on the air in one atomic step.

When the live lists turn out worse than the ones before (a complaint, the rolling evaluation),
``rollback`` moves the pointer ``topn/CURRENT.json`` back to the newest earlier entry of the
pointer history (``topn/_pointer_history.jsonl``) whose version still exists and still passes
its gate verdict, under the same lock as ``publish``. The move is recorded in the history
(``action: rollback``, ``rolled_back_from``, who and why) and as an alert under ``alerts/``.

It is not silently undone: the version rolled back from is never published again (a rerun of
its date makes a new version, which must pass its gates), and the next run's quality gate
compares against the champion the pointer now names: the rolled-back-to model.
"""
from __future__ import annotations

import datetime as dt
import getpass
import logging

from nightly_topn.errors import MissingPartition, PublishRefused
from nightly_topn.storage import MANIFEST, POINTER_HISTORY, PointerMoved, Storage

log = logging.getLogger(__name__)


def rollback_target(store: Storage) -> dict:
    """The history entry to go back to: the newest one before the live pointer that names another
    version, still complete and gate-passed, and not itself rolled back from."""
    live = store.published()
    if live is None:
        raise MissingPartition(f"nothing is published under {store.root}: nothing to roll back")
    history, gone = store.pointer_history(), store.rolled_back() | {live["path"]}
    skipped = []
    for entry in reversed(history):
        if entry["path"] in gone:
            continue
        version = store.root / entry["path"]
        problem = store.verdict_problem(version) if (version / MANIFEST).is_file() else f"{version} was deleted"
        if problem is None:
            return entry
        skipped.append(problem)
        gone.add(entry["path"])
    why = f" ({len(skipped)} earlier version(s) unusable, e.g. {skipped[0]})" if skipped else ""
    raise MissingPartition(f"no earlier published version to roll back to from {live['path']}{why}; "
                           f"see {store.pointer_path().parent / POINTER_HISTORY}")


def rollback(*, root=None, reason: str = "", by: str | None = None) -> dict:
    """Move the pointer back to the previous good version; returns the new pointer."""
    from nightly_topn.alerts import alert_payload, write_alert
    from nightly_topn.jobs.publish import publish_lock

    store = Storage.at(root)
    with publish_lock(store):
        live, tag = store.published_and_tag()
        if live is None:
            raise MissingPartition(f"nothing is published under {store.root}: nothing to roll back")
        target = rollback_target(store)
        now = dt.datetime.now(dt.timezone.utc)
        pointer = {"date": target["date"], "path": target["path"], "published_at": now.isoformat(timespec="seconds"),
                   "model_version": target.get("model_version"), "rows": target.get("rows"),  # as published
                   "rolled_back_from": live["path"], "rollback_reason": reason[:500],
                   "rolled_back_by": by or getpass.getuser()}
        try:
            store.move_pointer(pointer, "rollback", tag=tag)
        except PointerMoved:
            raise PublishRefused(f"not rolling back: a publish moved the live lists away from {live['path']} "
                                 "meanwhile; check `nightly-topn lookup` and roll back again if needed") from None
    message = (f"rolled back the live lists from {live['path']} to {target['path']} "
               f"(model {pointer['model_version']}): {reason or 'no reason given'}")
    log.warning("%s", message)
    alert = alert_payload(date=live["date"], dag_id="rollback", run_id=pointer["rolled_back_by"], task_id="rollback",
                          try_number=now.strftime("%Y%m%dT%H%M%S"), reason=message)
    write_alert({**alert, "error_type": "Rollback"}, root=root)
    return pointer
