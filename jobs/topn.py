"""Top-N: run the Beam pipeline into a fresh, unpublished version directory of the run date.

``topn/dt=D/v=VERSION/`` is complete (all part files + ``_index.parquet`` + manifest) before
anything can point at it; a failed attempt leaves only a ``.staging-*`` directory that nothing
reads. ``_index.parquet`` is the lookup sidecar: one row per (part file, row group) with its
first/last user id, so a reader finds a user's row group without opening every footer.
"""
from __future__ import annotations

import datetime as dt
import logging
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightly_topn import config, registry
from nightly_topn.config import RunParams
from nightly_topn.experiments import admitted
from nightly_topn.errors import BadInput, JobFailed, MissingPartition, NightlyTopNError
from nightly_topn.features import ITEM_CATEGORIES, read_new_items
from nightly_topn.storage import Storage, as_date

log = logging.getLogger(__name__)
INDEX_FILE = "_index.parquet"


def lookup_index(directory, files: list[str], key: str = "user_id") -> pa.Table:
    """Row-group directory of the part files: ``file, row_group, first_row, num_rows, min_KEY,
    max_KEY`` (``key``: ``user_id`` for the lists, ``item_id`` for similar items), sorted by key.
    The first/last key come from the row group's statistics, or, where a writer left none
    (Parquet drops them for long values), from the row group's own ``key`` column, so every part
    file can be indexed. Raises if ranges overlap (lookups rely on disjoint, sorted ranges)."""
    rows = []
    for name in files:
        handle = pq.ParquetFile(f"{directory}/{name}")
        meta = handle.metadata
        column = meta.schema.to_arrow_schema().get_field_index(key)
        first = 0
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            stats = group.column(column).statistics
            if stats is not None and stats.has_min_max:
                low, high = stats.min, stats.max
            else:
                ids = handle.read_row_group(rg, columns=[key]).column(0)
                low, high = pc.min(ids).as_py(), pc.max(ids).as_py()
            rows.append((low, high, name, rg, first, group.num_rows))
            first += group.num_rows
    rows.sort()
    for prev, cur in zip(rows, rows[1:]):
        if cur[0] <= prev[1]:
            raise BadInput(f"{key} ranges overlap: {prev[2]}#{prev[3]} and {cur[2]}#{cur[3]}")
    names = [f"min_{key}", f"max_{key}", "file", "row_group", "first_row", "num_rows"]
    types = [pa.string(), pa.string(), pa.string(), pa.int32(), pa.int64(), pa.int64()]
    return pa.table({n: pa.array([r[i] for r in rows], t) for i, (n, t) in enumerate(zip(names, types))})


def new_item_reach(directory, files: list[str], new_ids: pa.Array) -> dict:
    """``cold_start.reach`` of the written lists: which new items were shown, to how many users
    (one part file's ``item_ids`` at a time, vectorised)."""
    import numpy as np

    from nightly_topn.cold_start import reach

    shown = np.zeros(len(new_ids), dtype=bool)
    users = with_new = 0
    for name in files:
        lists = pq.read_table(f"{directory}/{name}", columns=["item_ids"]).column(0).combine_chunks()
        position = pc.index_in(pc.list_flatten(lists), value_set=new_ids)
        hit = pc.is_valid(position).to_numpy(zero_copy_only=False)
        shown[position.to_numpy(zero_copy_only=False)[hit].astype(np.int64)] = True
        with_new += len(np.unique(pc.list_parent_indices(lists).to_numpy()[hit]))
        users += len(lists)
    return reach(shown, users, with_new)


def arm_counts(parts) -> dict:
    """Users per arm in the written lists (what the gate and the report compare with the hash)."""
    counts = {}
    for part in parts:
        arms = pq.read_table(str(part), columns=["arm"]).column(0)
        for row in pc.value_counts(arms).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return counts


def topn(date, *, root=None, params: RunParams = RunParams(), beam_args: list[str] | None = None) -> dict:
    """Run the pipeline for ``date`` into a new version. Beam flags, later ones winning: the
    default runner (``FnApiRunner``: in-process, downloads nothing), ``$NIGHTLY_TOPN_BEAM_ARGS``
    and ``beam_args`` (the deployment's, any flag but the job's own), then the run's bounded
    ``beam_running_mode``/``beam_workers`` knobs."""
    from nightly_topn.pipelines import topn_pipeline

    date = as_date(date)
    store = Storage.at(root)
    features_dir = store.partition("features", date)
    models_dir = store.partition("models", date)
    deployment = config.deployment_beam_args(beam_args)
    beam_args = [f"--runner={config.DEFAULT_RUNNER}", *deployment, *params.run_beam_args(deployment)]
    if not (features_dir / "_manifest.json").is_file():
        raise MissingPartition(f"features partition for {date} is missing ({features_dir}); run preprocess first")
    info = registry.model_info(store, date, required=True)
    if params.diversity_strength > 0 and not (features_dir / ITEM_CATEGORIES).is_file():
        raise BadInput(f"diversity_strength={params.diversity_strength} needs item categories, and {features_dir} has "
                       f"none: land items.* with a categories column, or run with diversity_strength=0")
    experiment = admitted(store, date, info)
    if experiment is None and (info.get("challenger") or {}).get("active"):
        log.warning("topn %s: the challenger %s was not admitted by evaluate's quality gate: no challenger arm",
                    date, info["challenger"]["model"])
    arm_flags = [] if experiment is None else [
        f"--challenger={models_dir / 'final' / experiment['model']}", f"--challenger_version={experiment['model_version']}",
        f"--challenger_share={experiment['share']}", f"--experiment={experiment['experiment']}"]
    attempt = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = store.partition("topn", date) / f"v={attempt}"
    started = time.perf_counter()
    try:
        with store.staged(target) as stage:
            topn_pipeline.run(
                [
                    f"--features={features_dir}", f"--model={models_dir / 'final' / info['model']}",
                    f"--fallback={models_dir / 'final' / 'popularity'}", f"--output={stage}",
                    f"--logical_date={date.isoformat()}", f"--model_version={info['model_version']}",
                    f"--top_n={params.top_n}", f"--diversity_strength={params.diversity_strength}",
                    f"--candidates={params.candidates}", *arm_flags,
                    *beam_args,
                ]
            )
            parts = sorted(stage.glob("part-*.parquet"))
            candidates = candidate_report(stage)
            index = lookup_index(stage, [p.name for p in parts])
            rows = sum(index.column("num_rows").to_pylist())
            expected = pq.read_metadata(str(features_dir / "user_map.parquet")).num_rows
            if rows != expected:
                raise BadInput(f"top-N pipeline wrote {rows} rows for {expected} users into {stage}")
            pq.write_table(index, str(stage / INDEX_FILE), compression="zstd")
            new_items = read_new_items(features_dir)
            reach = None if new_items is None else new_item_reach(stage, [p.name for p in parts], new_items.ids)
            store.write_manifest(stage, producer="topn", date=date, inputs=[features_dir, models_dir],
                                 extra={"files": [p.name for p in parts], "rows": rows, "top_n": params.top_n,
                                        "index": INDEX_FILE, "new_items": reach,
                                        "diversity_strength": params.diversity_strength,
                                        "candidates": candidates,
                                        "model_version": info["model_version"], "beam_args": beam_args,
                                        "experiment": experiment and {
                                            **{k: experiment[k] for k in ("experiment", "share", "model", "model_version")},
                                            "users": arm_counts(parts)},
                                        "seconds": round(time.perf_counter() - started, 3)})
    except NightlyTopNError:
        raise
    except Exception as exc:  # Beam wraps a worker's error in pages of runner frames
        raise pipeline_error(exc, target) from exc
    log.info("topn %s: %d users -> %s (%d files); new items: %s; candidates: %s", date, rows, target, len(parts),
             reach, candidates)
    return {"date": date.isoformat(), "path": str(target), "rows": rows, "files": len(parts), "new_items": reach,
            "candidates": candidates}


def candidate_report(stage) -> dict:
    """What the pipeline's scorers reported (``.candidates-ROLE.json``: method; for ANN nprobe and the
    calibration recall), by role (champion, challenger); the files are removed from the version."""
    import json

    report = {}
    for path in sorted(stage.glob(".candidates-*.json")):
        report[path.name[len(".candidates-"):-len(".json")]] = json.loads(path.read_text())
        path.unlink()
    for path in stage.glob(".tmp-candidates-*"):
        path.unlink()
    return report


def pipeline_error(exc: Exception, stage) -> NightlyTopNError:
    """One line for a failed pipeline: the innermost error Beam reports (a full disk, an
    unreadable model), not the runner's frames; the traceback stays in the debug log."""
    import errno

    log.debug("top-N pipeline failed", exc_info=exc)
    cause, seen = exc, set()
    while cause.__cause__ is not None and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC or "No space left on device" in str(exc):
        return JobFailed(f"top-N pipeline failed: no space left on device while writing {stage} "
                        "(nothing was published; free space and run topn again)")
    last = [line for line in text.splitlines() if line.strip()][-1:] or [type(cause).__name__]
    return JobFailed(f"top-N pipeline failed ({type(cause).__name__}): {last[0].strip()[:500]}")
