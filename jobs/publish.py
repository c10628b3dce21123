"""Publish: point readers at the run date's newest complete top-N version, then tidy old versions.

Only called after every gate passed. The pointer never moves to an older date than the live
one unless ``allow_older`` (so backfilling history does not replace today's lists).
"""
from __future__ import annotations

import logging
import shutil

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


def publish(date, *, root=None, params: RunParams = RunParams(), allow_older: bool = False) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    version = latest_version(store, date)
    if not params.publish:
        log.info("publish %s: dry run, %s left unpublished", date, version)
        return {"date": date.isoformat(), "published": False, "path": str(version), "reason": "dry run"}
    manifest = read_json(version / MANIFEST)
    pointer = store.publish(date, version, allow_older=allow_older,
                            extra={"model_version": manifest["model_version"], "rows": manifest["rows"]})
    live = store.published() or {}
    for old in sorted(version.parent.glob("v=*"))[:-KEEP_VERSIONS]:
        if str(old.relative_to(store.root)) != live.get("path"):
            shutil.rmtree(old, ignore_errors=True)
    published = not pointer.get("kept")
    log.info("publish %s: %s", date, f"live -> {version}" if published else pointer["reason"])
    return {"date": date.isoformat(), "published": published, "pointer": pointer}
