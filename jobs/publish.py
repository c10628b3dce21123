"""Publish: point readers at the top-N version that ``validate_topn`` passed, then tidy old versions.

Publish moves the pointer only to a version whose gate verdict passed and still matches it
(``Storage.gated_version``): the exact version the gate before it checked (``version``, what
the DAG passes from task to task), or, by hand, the date's newest version, refused when that
one was not checked. The pointer never moves to an older date than the live one unless
``allow_older`` (the argument or the Param), so backfilling history does not replace today's lists.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext

from nightly_topn.config import RunParams
from nightly_topn.storage import MANIFEST, Storage, as_date, read_json, remove_tree

log = logging.getLogger(__name__)
KEEP_VERSIONS = 3
#: How long a publisher waits for another (a pointer update takes milliseconds).
LOCK_SECONDS = 600


@contextmanager
def publish_lock(store: Storage):
    """Serialise pointer updates across dates: concurrent runs (a backfill) must not interleave
    their read-compare-write of the pointer. On an object store the pointer's conditional write
    does that (``Storage.move_pointer``): no lock, so no lease a killed publisher could leave."""
    with nullcontext() if store.remote else store.lock("publish", timeout=LOCK_SECONDS):
        yield


def publish(date, *, root=None, params: RunParams = RunParams(), allow_older: bool | None = None,
            version: str | None = None) -> dict:
    date = as_date(date)
    allow_older = params.allow_older if allow_older is None else allow_older
    store = Storage.at(root)
    chosen = store.gated_version(date, version)
    if not params.publish:
        log.info("publish %s: dry run, %s left unpublished", date, chosen)
        return {"date": date.isoformat(), "published": False, "path": str(chosen), "reason": "dry run"}
    manifest = read_json(chosen / MANIFEST)
    with publish_lock(store):
        previous = (store.published() or {}).get("path")  # kept: what a rollback would go back to
        pointer = store.publish(date, chosen, allow_older=allow_older,
                                extra={"model_version": manifest["model_version"], "rows": manifest["rows"]})
        live = store.published() or {}
    for old in store.versions(date)[:-KEEP_VERSIONS]:
        if old != chosen and store.relative(old) not in (live.get("path"), previous):
            remove_tree(old)
    published = not pointer.get("kept")
    log.info("publish %s: %s", date, f"live -> {chosen}" if published else pointer["reason"])
    return {"date": date.isoformat(), "published": published, "path": str(chosen), "pointer": pointer}
