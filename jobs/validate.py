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
the gate fails (the quarantine partition is kept as evidence either way). A raw day that fails
its gate is moved out of ``raw/`` to ``quarantine/rejected-raw/dt=D.STAMP`` (``reject_raw``), by
whichever entry point ran the gate, so the next run re-lands the day from the source. A soft
check (``raw_activity``) warns when one user holds more than ``max_user_share`` of a day's events.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nightly_topn import registry, schemas
from nightly_topn.config import RunParams
from nightly_topn.errors import MissingPartition
from nightly_topn.experiments import CHALLENGER, CHAMPION, admitted, in_challenger
from nightly_topn.features import read_new_items
from nightly_topn.quality import GateFailed, gate_settings, require, run_gate
from nightly_topn.storage import (MANIFEST, Storage, as_date, fingerprint, move_tree, read_json, read_table, remove_tree,
                                  write_table)

log = logging.getLogger(__name__)


def raw_fingerprint(path) -> str:
    """Identifies one landed file (a re-land changes it), so a stale clean partition is not used."""
    return fingerprint(path)


def gated_events(store: Storage, day: dt.date) -> Path | None:
    """The raw gate's accepted rows of ``day`` (``clean/dt=D/events.parquet``) when they belong to
    the file landed now (a re-land changes its fingerprint), else None: the day is not gated."""
    raw = store.partition("raw", day) / "events.parquet"
    clean = store.partition("clean", day)
    if (clean / MANIFEST).is_file() and raw.is_file():
        if read_json(clean / MANIFEST).get("raw_fingerprint") == raw_fingerprint(raw):
            return clean / "events.parquet"
    return None


def _ratio_bounds(reference: float | None, ratio) -> tuple[int | None, int | None]:
    if not reference:
        return None, None
    return int(math.floor(reference * ratio[0])), int(math.ceil(reference * ratio[1]))


def raw_parameters(store: Storage, date: dt.date, settings: dict, *, volume: bool = True) -> dict:
    """Suite parameters of the raw gate: data interval (+ late allowance), weight range, volume
    bounds (``volume`` False: not judged, and the earlier days' manifests are not read)."""
    start = dt.datetime.combine(date, dt.time(), dt.timezone.utc)
    first = date - dt.timedelta(days=settings["volume_window_days"])
    counts = []
    for day in store.dates("raw") if volume else ():
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


#: Where a raw partition that failed its gate goes (``quarantine/rejected-raw/dt=D.STAMP``).
REJECTED_RAW = "rejected-raw"


def reject_raw(store: Storage, date) -> Path | None:
    """Move the raw partition of ``date`` out of ``raw/`` to ``quarantine/rejected-raw/dt=D.STAMP``.

    ``ingest`` keeps a landed day as it is, so a bad copy left in ``raw/`` would fail every rerun
    even after the upstream fix; once it is moved aside, the next run (``nightly-topn run``, the
    DAG, ``ingest`` by hand) re-lands the day from the source. The moved copy is kept as
    evidence, one folder per rejection. Returns where it went, or None when there was none.
    """
    date = as_date(date)
    source = store.partition("raw", date)
    if not source.is_dir():
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = store.root / "quarantine" / REJECTED_RAW / f"dt={date.isoformat()}.{stamp}"
    move_tree(source, target)
    log.warning("raw %s: rejected partition moved to %s; the next run re-lands the day from the source",
                date, target)
    return target


def rejected_raw(store: Storage, date) -> list[Path]:
    """The rejected raw partitions of ``date`` (``reject_raw``), oldest first."""
    base = store.root / "quarantine" / REJECTED_RAW
    return sorted(base.glob(f"dt={as_date(date).isoformat()}.*")) if base.is_dir() else []


def _move_aside(store: Storage, date: dt.date) -> tuple[Path | None, str]:
    """``reject_raw`` for a failed gate, and the clause of the error message that says where it went."""
    try:
        moved = reject_raw(store, date)
    except OSError as exc:
        log.error("raw %s: could not move the rejected partition aside", date, exc_info=True)
        return None, (f"moving the raw partition aside failed ({exc.strerror or type(exc).__name__}): remove "
                      f"{store.partition('raw', date)}, or the next run keeps the bad copy")
    if moved is None:
        return None, "the next run re-lands the day from the source"
    return moved, f"the raw partition was moved to {moved}, so the next run re-lands the day from the source"


def _headline(failures: list[dict]) -> str:
    """The first hard failure in a few words (the rest are in the summary lines below it)."""
    first = failures[0]
    text = f"{first['label']}: {first['why']}"
    if first["unexpected_count"] is not None:
        text += f" ({first['unexpected_count']} row(s))"
    elif first["observed_value"] is not None and not isinstance(first["observed_value"], (dict, list)):
        text += f" (observed {first['observed_value']})"
    if first["exception"]:
        text += " (the check raised an error)"
    return text + (f", and {len(failures) - 1} more hard failure(s)" if len(failures) > 1 else "")


RULE_COLUMNS = ["rule", "item_id", "user_id", "segment", "available_from", "available_until"]


def rules_frame(partition: Path) -> pd.DataFrame | None:
    """What the ``raw_rules`` suite checks: the landed rules (``rules.parquet``) and, as ``rule ==
    "window"`` rows, the items whose availability window is bounded (``items.parquet``); None when
    the day landed neither."""
    frames = []
    if (partition / "rules.parquet").is_file():
        frames.append(read_table(partition / "rules.parquet").to_pandas())
    if (partition / "items.parquet").is_file():
        items = read_table(partition / "items.parquet")
        if "available_from" in items.column_names:  # landed under the version-1 contract: no windows
            items = items.select(["item_id", "available_from", "available_until"]).to_pandas()
            bounded = items["available_from"].notna() | items["available_until"].notna()
            frames.append(items[bounded].assign(rule="window"))
    if not any(len(f) for f in frames):
        return None  # nothing to check: no rule, no bounded window
    frame = pd.concat(frames, ignore_index=True)
    for column in RULE_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype="datetime64[us, UTC]" if "available" in column
                                      else "object")
    return frame[RULE_COLUMNS]


def _validate_rules(store: Storage, date: dt.date, partition: Path, reports: Path, run=run_gate):
    """The ``raw_rules`` gate; a failure moves the day aside like a failed events gate (the rules
    came with it), so the next run re-lands both."""
    frame = rules_frame(partition)
    if frame is None:
        return None
    gate = run("raw_rules", frame, reports, {})
    if not gate.success:
        _, note = _move_aside(store, date)
        windows = int((frame["rule"] == "window").sum())
        raise GateFailed(f"candidate rules of {partition} ({len(frame) - windows} rule(s), {windows} availability "
                         f"window(s)) failed validation: {_headline(gate.failures)}; {note}\n{gate.summary()}")
    return gate


def validate_window(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None) -> dict:
    """The raw gate of every earlier day of ``date``'s training window that has not passed it (the
    first run of a window, a day landed by a later ingest), so every day that feeds a model has
    passed the raw gate: row by row and for duplicates. Volume is not judged for them: a past day's
    volume is the feed's own history (a drop or spike is caught on the day it lands as a run date;
    re-landing a quiet day of the past would only fail again). Each day is gated under its own date lock (taken in descending date
    order only, so two runs cannot wait on each other); a failing day fails the run in one line
    naming it, and is moved aside like any failed day, so the next run re-lands it."""
    from nightly_topn.quality import GateSession
    from nightly_topn.runs import date_guard

    date = as_date(date)
    store = Storage.at(root)
    first = date - dt.timedelta(days=params.train_window_days - 1)
    # an empty past day feeds nothing (and "empty" is a check of a feed's arrival, judged on its own run date)
    days = [d for d in store.dates("raw") if first <= d < date and gated_events(store, d) is None
            and read_json(store.partition("raw", d) / MANIFEST).get("tables", {}).get("events", {}).get("rows", 1)]
    results, started = [], time.perf_counter()
    if not days:
        return {"days": [], "rejected_rows": 0, "warned": [], "seconds": 0.0}
    with GateSession() as gates:  # one GX context for all of them; Data Docs only for the run date
        for day in days:
            with date_guard(day, root=root):
                if gated_events(store, day) is not None:  # gated meanwhile by that day's own run
                    continue
                try:
                    results.append(validate_raw(day, root=root, params=params, settings=settings, window=False,
                                                gates=gates))
                except GateFailed as exc:
                    raise GateFailed(f"window day {day} of the {date} run: {exc}") from exc
    if results:
        log.info("raw %s: gated %d earlier day(s) of the window in %.1fs (%d row(s) quarantined)", date,
                 len(results), time.perf_counter() - started, sum(r["rejected"] for r in results))
    return {"days": [r["date"] for r in results], "rejected_rows": sum(r["rejected"] for r in results),
            "warned": [r["date"] for r in results if r["outcome"] == "warned"],
            "seconds": round(time.perf_counter() - started, 3)}


def validate_raw(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None,
                 window: bool = True, gates=None) -> dict:
    """The raw gate of ``date``: quarantine row-level failures, fail on a hard one (or too many
    rejected rows), warn on soft ones; a failed day's raw partition is moved aside (``reject_raw``).
    With ``window``, then every earlier day of the training window not gated yet (``validate_window``);
    ``gates``: a ``quality.GateSession`` to run the checks in (no Data Docs), else ``run_gate``."""
    run_gate_ = gates.run if gates is not None else run_gate
    date = as_date(date)
    store = Storage.at(root)
    partition = store.partition("raw", date)
    path = partition / "events.parquet"
    if not (partition / MANIFEST).is_file() or not path.is_file():
        rejected = rejected_raw(store, date)
        hint = f" (its last rejected copy is {rejected[-1]})" if rejected else ""
        raise MissingPartition(f"raw partition for {date} is missing ({path}); run ingest first{hint}")
    settings = gate_settings("raw_events", settings)
    reports = store.partition("reports", date)
    rules = _validate_rules(store, date, partition, reports, run_gate_)
    frame = read_table(path).to_pandas()
    parameters = raw_parameters(store, date, settings, volume=gates is None)
    if gates is not None:  # an earlier day of a window (validate_window): volume is not judged
        parameters.update({k: None for k in parameters if k.startswith("volume_")})
    what = f"raw events {path} ({len(frame)} rows)"
    remove_tree(store.partition("clean", date))  # never leave a stale accepted set
    gate = run_gate_("raw_events", frame, reports, parameters)

    blocking = [f for f in gate.failures if not (f["quarantine"] and f["label"] in gate.unexpected_index)]
    reasons: dict[int, list[str]] = {}
    for f in gate.failures:
        for index in gate.unexpected_index.get(f["label"], []) if f not in blocking else []:
            reasons.setdefault(index, []).append(f"{f['label']}: {f['why']}")
    share = len(reasons) / len(frame) if len(frame) else 0.0
    limit = settings["max_rejected_share"]
    outcome = "failed" if blocking or share > limit else ("quarantined" if reasons else "passed")
    evidence = dict(share=share, limit=limit)
    if outcome == "failed":
        moved, note = _move_aside(store, date)
        quarantine = _write_quarantine(store, date, frame, reasons, gate, outcome=outcome, rejected_raw=moved,
                                       **evidence)
        if blocking:
            raise GateFailed(f"{what} failed validation: {_headline(blocking)}; {note}\n{gate.summary()}")
        raise GateFailed(
            f"{what} failed validation: {len(reasons)} row(s) ({share:.2%}) failed row-level checks, above "
            f"max_rejected_share {limit:.2%}; rejected rows with reasons in {quarantine}; {note}\n{gate.summary()}")
    quarantine = _write_quarantine(store, date, frame, reasons, gate, outcome=outcome, **evidence)
    clean = frame.drop(index=list(reasons)) if reasons else frame
    if reasons:
        log.warning("raw %s: %d row(s) (%.2f%%) quarantined to %s; continuing on %d clean rows",
                    date, len(reasons), 100 * share, quarantine, len(clean))
        recheck = run_gate_("raw_events", clean.reset_index(drop=True), reports, parameters, name="raw_events.clean")
        if not recheck.success:
            moved, note = _move_aside(store, date)
            _write_quarantine(store, date, frame, reasons, gate, outcome="failed", rejected_raw=moved, **evidence)
            raise GateFailed(f"clean rows of {what} failed validation: {_headline(recheck.failures)}; {note}\n"
                             f"{recheck.summary()}")
    activity = _check_activity(date, clean, reports, settings, run_gate_)
    table = schemas.conform(pa.Table.from_pandas(clean, preserve_index=False), schemas.EVENTS, source=f"clean rows of {path}")
    with store.staged(store.partition("clean", date)) as stage:
        write_table(table, stage / "events.parquet")
        store.write_manifest(stage, producer="validate_raw", date=date, inputs=[path], tables={"events": table},
                             extra={"raw_fingerprint": raw_fingerprint(path), "rejected_rows": len(reasons),
                                    "gate_result": gate.result_path, "activity_result": activity.result_path})
    warnings = [w["label"] for w in gate.warnings + activity.warnings + activity.failures
                + (rules.warnings if rules else [])]
    earlier = validate_window(date, root=root, params=params, settings=settings) if window else None
    return {"date": date.isoformat(), "window": earlier, "outcome": "warned" if outcome == "passed" and warnings else outcome,
            "rows": len(frame), "rejected": len(reasons), "clean_rows": table.num_rows,
            "warnings": warnings, "result": gate.result_path, "data_docs": gate.docs_path,
            "activity_result": activity.result_path, "quarantine": str(quarantine),
            "rules_result": rules.result_path if rules else None,
            "seconds": round(gate.seconds + activity.seconds + (rules.seconds if rules else 0.0), 3)}


def _check_activity(date: dt.date, clean: pd.DataFrame, reports: Path, settings: dict, run=run_gate):
    """The soft ``raw_activity`` check: the most active user's share of the day's (clean) events
    above ``max_user_share`` is a warning (a bot, a load test, a replayed session?). Days with
    fewer than ``user_share_min_events`` events are not judged (one user may well hold half of ten)."""
    counts = clean["user_id"].dropna().value_counts() if "user_id" in clean.columns else pd.Series(dtype="int64")
    events = int(counts.sum())
    top = int(counts.iloc[0]) if len(counts) else 0
    share = top / events if events else 0.0
    judged = events >= settings["user_share_min_events"]
    one_row = pd.DataFrame({"top_user_share": [share], "top_user_events": [top], "events": [events]})
    gate = run("raw_activity", one_row, reports,
                    {"max_user_share": settings["max_user_share"] if judged else None})
    if gate.warnings or gate.failures:
        log.warning("raw %s: user %s holds %d of the day's %d events (%.1f%%), above max_user_share %.1f%%",
                    date, counts.index[0] if len(counts) else None, top, events, 100 * share,
                    100 * settings["max_user_share"])
    return gate


def _write_quarantine(store, date, frame, reasons, gate, *, outcome, share, limit, rejected_raw=None) -> Path:
    """Rows that failed row-level checks, each with its reasons (an empty partition says "none");
    ``rejected_raw``: where the failed day's raw partition was moved (``reject_raw``)."""
    target = store.partition("quarantine", date)
    rows = frame.loc[sorted(reasons)].copy() if reasons else frame.iloc[0:0].copy()
    rows.insert(0, "row_number", rows.index.astype("int64"))
    rows["reason"] = ["; ".join(reasons[i]) for i in rows.index]
    table = pa.Table.from_pandas(rows, preserve_index=False)
    with store.staged(target) as stage:
        write_table(table, stage / "events.parquet")
        store.write_manifest(stage, producer="validate_raw", date=date, tables={"events": table},
                             extra={"outcome": outcome, "rejected_share": share, "max_rejected_share": limit,
                                    "landed_rows": len(frame), "gate_result": gate.result_path,
                                    "rejected_raw": str(rejected_raw) if rejected_raw else None})
    return target


def validate_features(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None) -> dict:
    """Gate on the prepared training data: ids mapped, weights valid, splits disjoint, shares/counts in bounds."""
    date = as_date(date)
    store = Storage.at(root)
    directory = store.partition("features", date)
    if not (directory / MANIFEST).is_file():
        raise MissingPartition(f"features partition for {date} is missing ({directory}); run preprocess first")
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


class LandedRules:
    """The candidate rules of a run date read by id from its raw partition (the landed rules, the
    items' availability windows, the users' segments), independently of preprocess's index
    space, so the top-N gate checks the lists against what was landed. ``raw=None``: no rules."""

    def __init__(self, raw: Path | None = None, date: dt.date | None = None):
        from nightly_topn.rules import unavailable

        def landed(name):
            path = raw / f"{name}.parquet" if raw is not None else None
            return read_table(path) if path is not None and path.is_file() else None

        table = landed("rules")
        frame = table.to_pandas() if table is not None else pd.DataFrame(columns=schemas.RULES.names)
        self.gone = set(frame.loc[frame["rule"] == "exclude", "item_id"]) | set(unavailable(landed("items"), date))
        self.blocks = frame.loc[frame["rule"] == "block", ["user_id", "item_id"]].drop_duplicates()
        allow = frame[frame["rule"] == "allow"]
        self.allowed = pd.MultiIndex.from_frame(allow[["segment", "item_id"]].astype("object"))
        users = landed("users")
        self.segment = pd.Series(dtype="object")  # user id -> the allow-listed segment the user is in
        if len(allow) and users is not None and "segment" in users.column_names:
            members = users.select(["user_id", "segment"]).to_pandas().drop_duplicates("user_id")
            members = members[members["segment"].isin(set(allow["segment"]))]
            self.segment = members.set_index("user_id")["segment"]

    def outside(self, pairs: pd.DataFrame) -> np.ndarray:
        """Per (``user_id``, ``item_id``) row: excluded for everyone or outside the user's allow-list."""
        gone = pairs["item_id"].isin(self.gone).to_numpy()
        if self.segment.empty:
            return gone
        segment = pairs["user_id"].map(self.segment)
        pair = pd.MultiIndex.from_arrays([segment.astype("object"), pairs["item_id"].astype("object")])
        return gone | (segment.notna().to_numpy() & ~pair.isin(self.allowed))

    def blocked(self, pairs: pd.DataFrame) -> np.ndarray:
        marked = pairs[["user_id", "item_id"]].merge(self.blocks.assign(_blocked=True), how="left",
                                                     on=["user_id", "item_id"])
        return marked["_blocked"].notna().to_numpy()

    def may_see(self, users: pd.Series, catalogue: pd.Series) -> pd.Series:
        """Per user id: how many catalogue items the rules leave (blocks aside)."""
        open_items = ~catalogue.isin(self.gone)
        counts = {name: int((open_items.to_numpy() & pd.MultiIndex.from_arrays(
                      [np.full(len(catalogue), name, dtype=object), catalogue.astype("object")]).isin(self.allowed)).sum())
                  for name in set(self.segment)}
        return users.map(self.segment).map(counts).fillna(int(open_items.sum())).astype("int64")


def topn_frame(version: Path, features_dir: Path, top_n: int, rules: LandedRules | None = None,
               arms: dict | None = None) -> pd.DataFrame:
    """One row per (user, rank) of a top-N version, with what the suite checks against.

    Columns: the list's ``user_id``/``item_id``/``score`` at ``rank``; ``n_items``/``n_scores`` (list
    lengths); ``expected_n`` = min(N, the items the user may be shown - those in the history);
    ``score_drop`` (previous score - this score); ``seen_pair`` ("user/item" when the item is in
    the user's history, else null); ``excluded_pair`` (the same, for an item a candidate rule
    forbids the user); ``user_index``/``item_index`` (null when not in the maps); ``source``,
    ``model_version``, ``logical_date``, ``arm``; ``wrong_arm`` (the user id when the list's A/B
    arm is not the one the assignment gives, or its model version not that arm's model's: ``arms``
    = ``{"champion": version, "challenger": version, "experiment", "share"}``, None = no
    experiment). A user with an empty list keeps one row (null item).
    """
    parts = sorted(version.glob("part-*.parquet"))
    if not parts:
        raise MissingPartition(f"top-N version {version} has no part files")
    lists = pa.concat_tables([read_table(p) for p in parts], promote_options="permissive").to_pandas()
    users = read_table(features_dir / "user_map.parquet").to_pandas()
    items = read_table(features_dir / "item_map.parquet").to_pandas()
    inter = read_table(features_dir / "interactions.parquet", schema=None).select(["user_index", "item_index"]).to_pandas()
    new = read_new_items(features_dir)
    if new is not None:  # new items are in the lists' catalogue (index n_warm + j); who met one has seen it
        seen = new.seen.tocoo()
        inter = pd.concat([inter, pd.DataFrame({"user_index": seen.row, "item_index": seen.col + len(items)})])
        items = pd.concat([items, pd.DataFrame({"item_index": np.arange(len(new)) + len(items),
                                                "item_id": new.ids.to_numpy(zero_copy_only=False)})],
                          ignore_index=True)
    history = (inter.merge(users, on="user_index").merge(items, on="item_index"))[["user_id", "item_id"]]

    lists["wrong_arm"] = wrong_arm(lists, arms)
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
    # what each user may be shown: the catalogue minus what the rules forbid, minus the history and
    # the user's blocks among what is left
    rules = rules or LandedRules()
    blocks = rules.blocks[rules.blocks["user_id"].isin(set(users["user_id"]))
                          & rules.blocks["item_id"].isin(set(items["item_id"]))]
    removed = pd.concat([history, blocks], ignore_index=True).drop_duplicates()
    removed = removed[~rules.outside(removed)].groupby("user_id").size().rename("n_removed")
    long = long.merge(removed, left_on="user_id", right_index=True, how="left")
    may_see = rules.may_see(long["user_id"], items["item_id"])
    long["expected_n"] = np.minimum(top_n, may_see - long["n_removed"].fillna(0).astype("int64"))
    forbidden = long["item_id"].notna().to_numpy() & (rules.outside(long) | rules.blocked(long))
    long["excluded_pair"] = np.where(forbidden, long["user_id"] + "/" + long["item_id"].fillna(""), None)
    long = long.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    long["logical_date"] = long["logical_date"].astype("string").astype("str")
    return long.drop(columns=["n_removed"])


def wrong_arm(lists: pd.DataFrame, arms: dict | None) -> np.ndarray:
    """Per list: its user id where its arm or model version is not what the experiment assigns."""
    if "arm" not in lists:
        lists["arm"] = CHAMPION  # written before the arm column existed: everybody was the champion's
    arms = arms or {}
    expected = np.where(in_challenger(lists["user_id"], arms.get("experiment", ""), arms.get("share", 0.0)),
                        CHALLENGER, CHAMPION)
    bad = lists["arm"].to_numpy() != expected
    if arms.get(CHAMPION) is not None:
        versions = np.where(expected == CHALLENGER, arms.get(CHALLENGER) or "", arms[CHAMPION])
        bad |= lists["model_version"].to_numpy() != versions
    return np.where(bad, lists["user_id"].to_numpy(), None)


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
    info = registry.model_info(store, date) or {}
    top_n = int(manifest.get("top_n") or params.top_n)
    champion = info.get("model_version") or manifest.get("model_version")
    experiment = admitted(store, date, info)
    arms = {"champion": champion, **({"challenger": experiment["model_version"], "experiment": experiment["experiment"],
                                      "share": experiment["share"]} if experiment else {})}
    frame = topn_frame(version, features_dir, top_n, LandedRules(store.partition("raw", date), date), arms)
    n_users = pq.read_metadata(str(features_dir / "user_map.parquet")).num_rows
    n_items = pq.read_metadata(str(features_dir / "item_map.parquet")).num_rows
    parameters = {
        "n_users": n_users,
        "coverage_hard_min": min(n_items, math.ceil(settings["coverage_hard_min_share"] * n_items)),
        "coverage_soft_min": min(n_items, math.ceil(settings["coverage_soft_min_share"] * n_items)),
        "model_versions": [champion] + ([experiment["model_version"]] if experiment else []),
        "dates": [date.isoformat()],
    }
    return _gate_version(store, date, version, "topn", frame, parameters, f"top-N {version} ({n_users} users, N={top_n})")


def _gate_version(store: Storage, date: dt.date, version: Path, checkpoint: str, frame, parameters: dict,
                  what: str) -> dict:
    """Run a published product's gate on ``version`` and record its verdict, passed or failed,
    inside the version (what ``publish``/``publish_similar`` check)."""
    gate = run_gate(checkpoint, frame, store.partition("reports", date), parameters, name=f"{checkpoint}.{version.name}")
    try:
        require(gate, what)
    except GateFailed as exc:
        store.record_verdict(version, passed=False, result=gate.result_path, reason=str(exc))
        raise
    store.record_verdict(version, passed=True, result=gate.result_path)
    return {"date": date.isoformat(), "outcome": "warned" if gate.warnings else "passed", "version": str(version),
            "rows": len(frame), "warnings": [w["label"] for w in gate.warnings], "result": gate.result_path,
            "data_docs": gate.docs_path, "seconds": gate.seconds}


def similar_frame(version: Path, features_dir: Path, rules: LandedRules) -> pd.DataFrame:
    """One row per (item, rank) of a similar-items version: ``item_id``, ``similar_id``, ``rank``,
    ``score``, ``score_drop``, ``n_items``/``n_scores``, ``self_pair``/``excluded_pair`` (non-null
    when the item lists itself / an item excluded for everyone), ``source_index``/``item_index``
    (null when not in the item map), ``model_version``, ``logical_date``; an empty list keeps one row."""
    parts = sorted(version.glob("part-*.parquet"))
    if not parts:
        raise MissingPartition(f"similar-items version {version} has no part files")
    lists = pa.concat_tables([read_table(p) for p in parts]).to_pandas()
    catalogue = read_table(features_dir / "item_map.parquet").to_pandas()
    lists["n_items"] = lists["item_ids"].map(len).astype("int64")
    lists["n_scores"] = lists["scores"].map(len).astype("int64")
    empty = lists["n_items"] == 0
    lists["item_ids"] = [[None] if e else list(v) for v, e in zip(lists["item_ids"], empty)]
    lists["scores"] = [[np.nan] if e else list(v) for v, e in zip(lists["scores"], empty)]
    lists["rank"] = [list(range(len(v))) for v in lists["item_ids"]]
    long = lists.explode(["item_ids", "scores", "rank"], ignore_index=True).rename(
        columns={"item_ids": "similar_id", "scores": "score"})
    long["score"] = pd.to_numeric(long["score"], errors="coerce").astype("float64")
    long["score_drop"] = long.groupby("item_id", sort=False)["score"].shift(1) - long["score"]
    same = long["similar_id"].notna() & (long["similar_id"] == long["item_id"])
    long["self_pair"] = np.where(same, long["item_id"], None)
    gone = long["similar_id"].notna() & long["similar_id"].isin(rules.gone)
    long["excluded_pair"] = np.where(gone, long["item_id"] + "/" + long["similar_id"].fillna(""), None)
    index = catalogue.set_index("item_id")["item_index"]
    long["source_index"] = long["item_id"].map(index)
    long["item_index"] = long["similar_id"].map(index)
    long["logical_date"] = long["logical_date"].astype("string").astype("str")
    return long


def validate_similar(date, *, root=None, params: RunParams = RunParams(), settings: dict | None = None,
                     version: str | None = None) -> dict:
    """Gate on one similar-items version of ``date`` (``version``, else the newest) before
    ``publish_similar``; its verdict is recorded inside the version, as for the lists."""
    date = as_date(date)
    if not params.similar_items:
        return {"date": date.isoformat(), "outcome": "skipped", "version": None}
    store = Storage.at(root)
    version = store.version(date, version, "similar") if version else store.newest_version(date, "similar")
    manifest = read_json(version / MANIFEST)
    features_dir = store.partition("features", date)
    frame = similar_frame(version, features_dir, LandedRules(store.partition("raw", date), date))
    parameters = {"n_items": pq.read_metadata(str(features_dir / "item_map.parquet")).num_rows,
                  "k": int(manifest.get("k") or params.similar_items),
                  "model_versions": [manifest.get("model_version")], "dates": [date.isoformat()]}
    return _gate_version(store, date, version, "similar", frame, parameters,
                         f"similar items {version} ({parameters['n_items']} items, K={parameters['k']})")
