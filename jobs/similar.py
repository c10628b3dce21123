"""Similar items: every catalogue item's most similar items into a new version, gated and
published like the user lists, behind their own pointer ``similar/CURRENT.json``.

``similar`` writes ``similar/dt=D/v=ATTEMPT/`` (part files of ``SIMILAR_RANGE`` items sorted by
item id, row groups of 128 items, an ``_index.parquet`` sidecar keyed by ``item_id``, the
manifest last); ``validate_similar`` (``jobs.validate``) records its verdict in the version;
``publish_similar`` moves the pointer under the publish lock. With ``similar_items`` = 0 the
three steps do nothing. ``nightly-topn lookup --item I`` reads the live version.
"""
from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nightly_topn import registry, schemas
from nightly_topn.config import RunParams
from nightly_topn.errors import MissingPartition
from nightly_topn.storage import MANIFEST, Storage, as_date, read_json, remove_tree

log = logging.getLogger(__name__)
#: Items per part file.
SIMILAR_RANGE = 8192
KEEP_VERSIONS = 3


def _excluded(features_dir, n_items: int) -> np.ndarray:
    """Warm item indices the run's rules exclude for everyone (``exclude`` rows of ``rules.parquet``)."""
    from nightly_topn.features import read_optional
    from nightly_topn.rules import RULES_FILE

    table = read_optional(features_dir, RULES_FILE)
    if table is None:
        return np.empty(0, dtype=np.int64)
    frame = table.to_pandas()
    items = frame.loc[frame["rule"] == "exclude", "item_index"].to_numpy(dtype=np.int64)
    return items[items < n_items]


def similar(date, *, root=None, params: RunParams = RunParams()) -> dict:
    """Compute and write the date's similar items with its final model; returns the version."""
    from nightly_topn.features import Features
    from nightly_topn.jobs.topn import INDEX_FILE, lookup_index
    from nightly_topn.models import load_model
    from nightly_topn.pipelines.topn_pipeline import DEFAULT_ROW_GROUP
    from nightly_topn.similar import similar_items

    date = as_date(date)
    if not params.similar_items:
        return {"date": date.isoformat(), "skipped": "similar_items is 0", "path": None}
    store = Storage.at(root)
    features_dir = store.partition("features", date)
    if not (features_dir / MANIFEST).is_file():
        raise MissingPartition(f"features partition for {date} is missing ({features_dir}); run preprocess first")
    info = registry.model_info(store, date, required=True)
    models_dir = store.partition("models", date)
    started = time.perf_counter()
    features = Features.load(features_dir)
    model = load_model(models_dir / "final" / info["model"])
    excluded = _excluded(features_dir, len(features.item_ids))
    idx, vals, method = similar_items(model, features.matrix(), params.similar_items, excluded)
    seconds = round(time.perf_counter() - started, 3)
    item_ids = pa.array(features.item_ids, pa.string())
    attempt = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = store.partition("similar", date) / f"v={attempt}"
    files = []
    with store.staged(target) as stage:
        for lo in range(0, len(item_ids), SIMILAR_RANGE):
            hi = min(len(item_ids), lo + SIMILAR_RANGE)
            valid = idx[lo:hi] >= 0
            offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
            n = hi - lo
            batch = pa.RecordBatch.from_arrays([
                item_ids.slice(lo, n),
                pa.ListArray.from_arrays(offsets, item_ids.take(pa.array(idx[lo:hi][valid]))),
                pa.ListArray.from_arrays(offsets, pa.array(vals[lo:hi][valid], pa.float32())),
                pa.repeat(pa.scalar(info["model_version"], pa.string()), n),
                pa.repeat(pa.scalar(date, pa.date32()), n),
            ], schema=schemas.SIMILAR)
            name = f"part-{lo:010d}-{hi:010d}.parquet"
            with pq.ParquetWriter(str(stage / name), schemas.SIMILAR, compression="zstd",
                                  sorting_columns=[pq.SortingColumn(0)]) as writer:
                writer.write_batch(batch, row_group_size=DEFAULT_ROW_GROUP)
            files.append(name)
        pq.write_table(lookup_index(stage, files, key="item_id"), str(stage / INDEX_FILE), compression="zstd")
        store.write_manifest(stage, producer="similar", date=date, inputs=[features_dir, models_dir],
                             extra={"files": files, "rows": len(item_ids), "index": INDEX_FILE, "k": params.similar_items,
                                    "method": method, "excluded_items": int(len(excluded)),
                                    "model_version": info["model_version"], "seconds": seconds})
    log.info("similar %s: %d items x %d (%s, %.1fs) -> %s", date, len(item_ids), params.similar_items, method,
             seconds, target)
    return {"date": date.isoformat(), "path": str(target), "rows": len(item_ids), "method": method,
            "seconds": seconds}


def publish_similar(date, *, root=None, params: RunParams = RunParams(), version: str | None = None) -> dict:
    """Point ``similar/CURRENT.json`` at the version ``validate_similar`` passed (as ``publish``)."""
    from nightly_topn.jobs.publish import publish_lock

    date = as_date(date)
    if not params.similar_items:
        return {"date": date.isoformat(), "published": False, "reason": "similar_items is 0"}
    store = Storage.at(root)
    chosen = store.gated_version(date, version, product="similar")
    if not params.publish:
        return {"date": date.isoformat(), "published": False, "path": str(chosen), "reason": "dry run"}
    manifest = read_json(chosen / MANIFEST)
    with publish_lock(store):
        previous = (store.published("similar") or {}).get("path")
        pointer = store.publish(date, chosen, allow_older=params.allow_older, product="similar",
                                extra={"model_version": manifest["model_version"], "rows": manifest["rows"]})
        live = store.published("similar") or {}
    for old in store.versions(date, "similar")[:-KEEP_VERSIONS]:
        if old != chosen and store.relative(old) not in (live.get("path"), previous):
            remove_tree(old)
    published = not pointer.get("kept")
    log.info("publish_similar %s: %s", date, f"live -> {chosen}" if published else pointer["reason"])
    return {"date": date.isoformat(), "published": published, "path": str(chosen), "pointer": pointer}
