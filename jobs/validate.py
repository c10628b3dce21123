"""Validate: the three Great Expectations gates of a daily run.

* ``validate_raw``      — the run date's landed events, before preprocessing;
* ``validate_features`` — the prepared interactions, before training;
* ``validate_topn``     — the newest top-N version of the run date, before publishing.

Each runs a committed checkpoint (``expectations/gx``), keeps GX's result as JSON plus Data
Docs under ``reports/dt=D/``, logs a summary, and raises ``GateFailed`` on a hard failure, so
nothing downstream (train, publish) runs and the published pointer stays where it was.

Raw rows failing a row-level expectation (``meta.quarantine``) go to ``quarantine/dt=D/`` with
the reason. When their share is at most ``max_rejected_share`` (``gates.json``) the clean rows
are re-validated and written to ``clean/dt=D/events.parquet``, which preprocess reads; above it
the gate fails (the quarantine partition is kept as evidence either way).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nightly_topn import schemas
from nightly_topn.config import RunParams
from nightly_topn.quality import GateFailed, gate_settings, require, run_gate
from nightly_topn.storage import MANIFEST, Storage, as_date, read_json, read_table, write_table

log = logging.getLogger(__name__)


def raw_fingerprint(path: Path) -> str:
    """Identifies one landed file (a re-land changes it), so a stale clean partition is not used."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _ratio_bounds(reference: float | None, ratio) -> tuple[int | None, int | None]:
    if not reference:
        return None, None
    return int(math.floor(reference * ratio[0])), int(math.ceil(reference * ratio[1]))


def raw_parameters(store: Storage, date: dt.date, settings: dict) -> dict:
    """Suite parameters of the raw gate: data interval (+ late allowance), weight range, volume bounds."""
    start = dt.datetime.combine(date, dt.time(), dt.timezone.utc)
    first = date - dt.timedelta(days=settings["volume_window_days"])
    counts = []
    for day in store.dates("raw"):
        if first <= day < date:
            manifest = read_json(store.partition("raw", day) / MANIFEST)
            counts.append(manifest.get("tables", {}).get("events", {}).get("rows", 0))
    median = statistics.median(counts) if len(counts) >= settings["volume_min_history_days"] else None
    hard_min, hard_max = _ratio_bounds(median, settings["volume_hard_ratio"])
    soft_min, soft_max = _ratio_bounds(median, settings["volume_soft_ratio"])
    return {
        "min_time": (start - dt.timedelta(hours=settings["late_allowance_hours"])).isoformat(),
        "max_time": (start + dt.timedelta(days=1)).isoformat(),
        "max_weight": settings["max_weight"],
        "duplicate_mostly": 1.0 - settings["max_duplicate_share"],
        "volume_hard_min": hard_min, "volume_hard_max": hard_max,
        "volume_soft_min": soft_min, "volume_soft_max": soft_max,
        "trailing_counts": counts, "trailing_median": median,
    }


def validate_raw(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    partition = store.partition("raw", date)
    path = partition / "events.parquet"
    if not (partition / MANIFEST).is_file() or not path.is_file():
        raise FileNotFoundError(f"raw partition for {date} is missing ({path}); run ingest first")
    settings = gate_settings("raw_events", settings)
    frame = read_table(path).to_pandas()
    reports = store.partition("reports", date)
    parameters = raw_parameters(store, date, settings)
    what = f"raw events {path} ({len(frame)} rows)"
    shutil.rmtree(store.partition("clean", date), ignore_errors=True)  # never leave a stale accepted set
    gate = run_gate("raw_events", frame, reports, parameters)

    blocking = [f for f in gate.failures if not (f["quarantine"] and f["label"] in gate.unexpected_index)]
    reasons: dict[int, list[str]] = {}
    for f in gate.failures:
        for index in gate.unexpected_index.get(f["label"], []) if f not in blocking else []:
            reasons.setdefault(index, []).append(f"{f['label']}: {f['why']}")
    share = len(reasons) / len(frame) if len(frame) else 0.0
    limit = settings["max_rejected_share"]
    outcome = "failed" if blocking or share > limit else ("quarantined" if reasons else "passed")
    quarantine = _write_quarantine(store, date, frame, reasons, gate, outcome=outcome, share=share, limit=limit)
    if blocking:
        require(gate, what)
    if share > limit:
        raise GateFailed(
            f"{what} failed validation: {len(reasons)} row(s) ({share:.2%}) failed row-level checks, above "
            f"max_rejected_share {limit:.2%}; rejected rows with reasons in {quarantine}\n{gate.summary()}")
    clean = frame.drop(index=list(reasons)) if reasons else frame
    if reasons:
        log.warning("raw %s: %d row(s) (%.2f%%) quarantined to %s; continuing on %d clean rows",
                    date, len(reasons), 100 * share, quarantine, len(clean))
        recheck = run_gate("raw_events", clean.reset_index(drop=True), reports, parameters, name="raw_events.clean")
        require(recheck, f"clean rows of {what}")
    table = schemas.conform(pa.Table.from_pandas(clean, preserve_index=False), schemas.EVENTS, source=f"clean rows of {path}")
    with store.staged(store.partition("clean", date)) as stage:
        write_table(table, stage / "events.parquet")
        store.write_manifest(stage, producer="validate_raw", date=date, inputs=[path], tables={"events": table},
                             extra={"raw_fingerprint": raw_fingerprint(path), "rejected_rows": len(reasons),
                                    "gate_result": gate.result_path})
    return {"date": date.isoformat(), "outcome": "warned" if outcome == "passed" and gate.warnings else outcome,
            "rows": len(frame), "rejected": len(reasons), "clean_rows": table.num_rows,
            "warnings": [w["label"] for w in gate.warnings], "result": gate.result_path, "data_docs": gate.docs_path,
            "quarantine": str(quarantine), "seconds": gate.seconds}


def _write_quarantine(store, date, frame, reasons, gate, *, outcome, share, limit) -> Path:
    """Rows that failed row-level checks, each with its reasons (an empty partition says "none")."""
    target = store.partition("quarantine", date)
    rows = frame.loc[sorted(reasons)].copy() if reasons else frame.iloc[0:0].copy()
    rows.insert(0, "row_number", rows.index.astype("int64"))
    rows["reason"] = ["; ".join(reasons[i]) for i in rows.index]
    table = pa.Table.from_pandas(rows, preserve_index=False)
    with store.staged(target) as stage:
        write_table(table, stage / "events.parquet")
        store.write_manifest(stage, producer="validate_raw", date=date, tables={"events": table},
                             extra={"outcome": outcome, "rejected_share": share, "max_rejected_share": limit,
                                    "landed_rows": len(frame), "gate_result": gate.result_path})
    return target


def validate_features(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None) -> dict:
    """Gate on the prepared training data: ids mapped, weights valid, splits disjoint, shares/counts in bounds."""
    date = as_date(date)
    store = Storage.at(root)
    directory = store.partition("features", date)
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(f"features partition for {date} is missing ({directory}); run preprocess first")
    settings = gate_settings("features", settings)
    inter = read_table(directory / "interactions.parquet").to_pandas()
    users = read_table(directory / "user_map.parquet").to_pandas()
    items = read_table(directory / "item_map.parquet").to_pandas()
    frame = (inter.merge(users, on="user_index", how="left", validate="many_to_one")
             .merge(items, on="item_index", how="left", validate="many_to_one"))
    frame["is_holdout"] = (frame["split"] == "holdout").astype("float64")
    previous = [d for d in store.dates("features") if d < date]
    stats = read_json(store.partition("features", previous[-1]) / MANIFEST).get("stats", {}) if previous else {}
    users_soft = _ratio_bounds(stats.get("users"), settings["count_soft_ratio"])
    items_soft = _ratio_bounds(stats.get("items"), settings["count_soft_ratio"])
    parameters = {
        "max_user_index": len(users) - 1, "max_item_index": len(items) - 1,
        "max_confidence": settings["max_confidence"],
        "holdout_min": settings["holdout_share"][0], "holdout_max": settings["holdout_share"][1],
        "min_users": settings["min_users"], "min_items": settings["min_items"],
        "users_soft_min": users_soft[0], "users_soft_max": users_soft[1],
        "items_soft_min": items_soft[0], "items_soft_max": items_soft[1],
    }
    gate = run_gate("features", frame, store.partition("reports", date), parameters)
    require(gate, f"features {directory} ({len(frame)} interactions)")
    return {"date": date.isoformat(), "outcome": "warned" if gate.warnings else "passed", "rows": len(frame),
            "warnings": [w["label"] for w in gate.warnings], "result": gate.result_path,
            "data_docs": gate.docs_path, "seconds": gate.seconds}


def topn_frame(version: Path, features_dir: Path, top_n: int) -> pd.DataFrame:
    """One row per (user, rank) of a top-N version, with what the suite checks against.

    Columns: the list's ``user_id``/``item_id``/``score`` at ``rank``; ``n_items``/``n_scores`` (list
    lengths); ``expected_n`` = min(N, catalog size - items in the user's history); ``score_drop``
    (previous score - this score); ``seen_pair`` ("user/item" when the item is in the user's
    history, else null); ``user_index``/``item_index`` (null when not in the maps); ``source``,
    ``model_version``, ``logical_date``. A user with an empty list keeps one row (null item).
    """
    parts = sorted(version.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"top-N version {version} has no part files")
    lists = pa.concat_tables([read_table(p) for p in parts], promote_options="permissive").to_pandas()
    users = read_table(features_dir / "user_map.parquet").to_pandas()
    items = read_table(features_dir / "item_map.parquet").to_pandas()
    inter = read_table(features_dir / "interactions.parquet", schema=None).select(["user_index", "item_index"]).to_pandas()
    history = (inter.merge(users, on="user_index").merge(items, on="item_index"))[["user_id", "item_id"]]

    lists["n_items"] = lists["item_ids"].map(lambda v: 0 if v is None else len(v)).astype("int64")
    lists["n_scores"] = lists["scores"].map(lambda v: 0 if v is None else len(v)).astype("int64")
    empty = lists["n_items"] == 0
    lists["item_ids"] = [[None] if e else list(v) for v, e in zip(lists["item_ids"], empty)]
    lists["scores"] = [list(s) if ni == ns and not e else [np.nan] * max(ni, 1)
                       for s, ni, ns, e in zip(lists["scores"], lists["n_items"], lists["n_scores"], empty)]
    lists["rank"] = [list(range(len(v))) for v in lists["item_ids"]]
    long = lists.explode(["item_ids", "scores", "rank"], ignore_index=True).rename(
        columns={"item_ids": "item_id", "scores": "score"})
    long["score"] = pd.to_numeric(long["score"], errors="coerce").astype("float64")
    long["rank"] = long["rank"].astype("int64")
    previous = long.groupby("user_id", sort=False)["score"].shift(1)
    long["score_drop"] = previous - long["score"]
    seen = history.assign(seen_pair=history["user_id"] + "/" + history["item_id"])
    long = long.merge(seen, on=["user_id", "item_id"], how="left")
    n_seen = history.groupby("user_id").size().rename("n_seen")
    long = long.merge(n_seen, left_on="user_id", right_index=True, how="left")
    long["expected_n"] = np.minimum(top_n, len(items) - long["n_seen"].fillna(0).astype("int64"))
    long = long.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    long["logical_date"] = long["logical_date"].astype("string").astype("str")
    return long.drop(columns=["n_seen"])


def validate_topn(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None,
                  version: str | None = None) -> dict:
    """Gate on one top-N version of ``date`` before publish: ``version`` (what the top-N job just
    wrote; the DAG passes it on), else the date's newest version. The verdict, passed or failed,
    is recorded inside that version (``_gate.json``): publish only moves the pointer to a version
    whose verdict passed and still matches it."""
    date = as_date(date)
    store = Storage.at(root)
    settings = gate_settings("topn", settings)
    version = store.version(date, version) if version else store.newest_version(date)
    manifest = read_json(version / MANIFEST)
    features_dir = store.partition("features", date)
    info_path = store.partition("models", date) / "model_info.json"
    info = read_json(info_path) if info_path.is_file() else {}
    top_n = int(manifest.get("top_n") or params.top_n)
    frame = topn_frame(version, features_dir, top_n)
    n_users = pq.read_metadata(features_dir / "user_map.parquet").num_rows
    n_items = pq.read_metadata(features_dir / "item_map.parquet").num_rows
    parameters = {
        "n_users": n_users,
        "coverage_hard_min": min(n_items, math.ceil(settings["coverage_hard_min_share"] * n_items)),
        "coverage_soft_min": min(n_items, math.ceil(settings["coverage_soft_min_share"] * n_items)),
        "model_versions": [info.get("model_version") or manifest.get("model_version")],
        "dates": [date.isoformat()],
    }
    gate = run_gate("topn", frame, store.partition("reports", date), parameters, name=f"topn.{version.name}")
    try:
        require(gate, f"top-N {version} ({n_users} users, N={top_n})")
    except GateFailed as exc:
        store.record_verdict(version, passed=False, result=gate.result_path, reason=str(exc))
        raise
    store.record_verdict(version, passed=True, result=gate.result_path)
    return {"date": date.isoformat(), "outcome": "warned" if gate.warnings else "passed", "version": str(version),
            "rows": len(frame), "warnings": [w["label"] for w in gate.warnings], "result": gate.result_path,
            "data_docs": gate.docs_path, "seconds": gate.seconds}
