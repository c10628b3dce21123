"""Top-N: run the Beam pipeline into a fresh, unpublished version directory of the run date.

``topn/dt=D/v=VERSION/`` is complete (all part files + ``_index.parquet`` + manifest) before
anything can point at it; a failed attempt leaves only a ``.staging-*`` directory that nothing
reads. ``_index.parquet`` is the lookup sidecar: one row per (part file, row group) with its
first/last user id, so a reader finds a user's row group without opening every footer.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq

from nightly_topn import config
from nightly_topn.config import RunParams
from nightly_topn.storage import Storage, as_date

log = logging.getLogger(__name__)
INDEX_FILE = "_index.parquet"


def lookup_index(directory, files: list[str]) -> pa.Table:
    """Row-group directory of the part files: ``file, row_group, first_row, num_rows, min_user_id,
    max_user_id``, sorted by user id. Raises if a row group lacks statistics or ranges overlap
    (lookups rely on disjoint, sorted ranges)."""
    rows = []
    for name in files:
        meta = pq.read_metadata(f"{directory}/{name}")
        column = meta.schema.to_arrow_schema().get_field_index("user_id")
        first = 0
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            stats = group.column(column).statistics
            if stats is None or not stats.has_min_max:
                raise RuntimeError(f"{name} row group {rg} has no user_id statistics")
            rows.append((stats.min, stats.max, name, rg, first, group.num_rows))
            first += group.num_rows
    rows.sort()
    for prev, cur in zip(rows, rows[1:]):
        if cur[0] <= prev[1]:
            raise RuntimeError(f"user id ranges overlap: {prev[2]}#{prev[3]} and {cur[2]}#{cur[3]}")
    names = ["min_user_id", "max_user_id", "file", "row_group", "first_row", "num_rows"]
    types = [pa.string(), pa.string(), pa.string(), pa.int32(), pa.int64(), pa.int64()]
    return pa.table({n: pa.array([r[i] for r in rows], t) for i, (n, t) in enumerate(zip(names, types))})


def topn(date, *, root=None, params: RunParams = RunParams(), beam_args: list[str] | None = None) -> dict:
    """Run the pipeline for ``date``; Beam flags = ``$NIGHTLY_TOPN_BEAM_ARGS`` + ``params.beam_args``
    + ``beam_args`` (later ones win), on the in-process DirectRunner when none names a runner."""
    from nightly_topn.pipelines import topn_pipeline

    date = as_date(date)
    store = Storage.at(root)
    features_dir = store.partition("features", date)
    models_dir = store.partition("models", date)
    info = json.loads((models_dir / "model_info.json").read_text())
    attempt = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = store.partition("topn", date) / f"v={attempt}"
    beam_args = config.beam_args(params.beam_args, beam_args)
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args.insert(0, "--runner=DirectRunner")  # Prism's binary download is not needed locally
    started = time.perf_counter()
    with store.staged(target) as stage:
        topn_pipeline.run(
            [
                f"--features={features_dir}", f"--model={models_dir / 'final' / info['model']}",
                f"--fallback={models_dir / 'final' / 'popularity'}", f"--output={stage}",
                f"--logical_date={date.isoformat()}", f"--model_version={info['model_version']}",
                f"--top_n={params.top_n}", *beam_args,
            ]
        )
        parts = sorted(stage.glob("part-*.parquet"))
        index = lookup_index(stage, [p.name for p in parts])
        rows = sum(index.column("num_rows").to_pylist())
        expected = pq.read_metadata(features_dir / "user_map.parquet").num_rows
        if rows != expected:
            raise RuntimeError(f"top-N pipeline wrote {rows} rows for {expected} users into {stage}")
        pq.write_table(index, stage / INDEX_FILE, compression="zstd")
        store.write_manifest(stage, producer="topn", date=date, inputs=[features_dir, models_dir],
                             extra={"files": [p.name for p in parts], "rows": rows, "top_n": params.top_n,
                                    "index": INDEX_FILE,
                                    "model_version": info["model_version"], "beam_args": beam_args,
                                    "seconds": round(time.perf_counter() - started, 3)})
    log.info("topn %s: %d users -> %s (%d files)", date, rows, target, len(parts))
    return {"date": date.isoformat(), "path": str(target), "rows": rows, "files": len(parts)}
