"""Publish: point readers at the run date's newest complete top-N version, then tidy old versions.

Only called after every gate passed. The pointer never moves to an older date than the live
one unless ``allow_older`` (the argument or the ``allow_older`` Param), so backfilling history
does not replace today's lists.
"""
from __future__ import annotations

import fcntl
import logging
import shutil
from contextlib import contextmanager

from nightly_topn.config import RunParams
from nightly_topn.storage import MANIFEST, Storage, as_date, read_json

log = logging.getLogger(__name__)
KEEP_VERSIONS = 3


def latest_version(store: Storage, date):
    base = store.partition("topn", date)
    versions = sorted(p for p in base.glob("v=*") if (p / MANIFEST).is_file()) if base.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"no complete top-N version for {as_date(date)} under {base}")
    return versions[-1]


@contextmanager
def publish_lock(store: Storage):
    """Serialise pointer updates: concurrent runs (a backfill) must not interleave read-compare-write."""
    path = store.pointer_path().with_name(".publish.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(date, *, root=None, params: RunParams = RunParams(), allow_older: bool | None = None) -> dict:
    date = as_date(date)
    allow_older = params.allow_older if allow_older is None else allow_older
    store = Storage.at(root)
    version = latest_version(store, date)
    if not params.publish:
        log.info("publish %s: dry run, %s left unpublished", date, version)
        return {"date": date.isoformat(), "published": False, "path": str(version), "reason": "dry run"}
    manifest = read_json(version / MANIFEST)
    with publish_lock(store):
        pointer = store.publish(date, version, allow_older=allow_older,
                                extra={"model_version": manifest["model_version"], "rows": manifest["rows"]})
        live = store.published() or {}
    for old in sorted(version.parent.glob("v=*"))[:-KEEP_VERSIONS]:
        if str(old.relative_to(store.root)) != live.get("path"):
            shutil.rmtree(old, ignore_errors=True)
    published = not pointer.get("kept")
    log.info("publish %s: %s", date, f"live -> {version}" if published else pointer["reason"])
    return {"date": date.isoformat(), "published": published, "pointer": pointer}
