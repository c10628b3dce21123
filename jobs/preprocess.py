"""Preprocess: turn the training window's raw events into model-ready interactions.

Window = the ``train_window_days`` days up to and including the run date. Steps: drop events
after the run date (point in time), dedupe identical events, weight each event into a
confidence (the deployment's weight of its type, ``config.event_weights``, times the event's
own ``weight``: a play count, a quantity, the stars of a rating; optionally decayed by age,
``recency_half_life_days``), aggregate per (user, item), filter rare items/users, map ids to dense indices
(sorted external ids, so the mapping is deterministic), and split off a temporal holdout:
pairs first seen at or after the ``holdout_quantile`` of event times, whose user and item also
occur before it. When the run date landed item attributes (``raw/dt=D/items.parquet``) and
``new_item_days`` > 0, also the new items outside the catalogue with their warm attribute
neighbours (``new_items.parquet``, ``nightly_topn.cold_start``). The run date's candidate rules
(landed ``rules.parquet``, the items' availability windows, the users' segments) are resolved into
the partition's index space (``rules.parquet``, ``nightly_topn.rules``) for the top-N kernel.
"""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from nightly_topn import rules, schemas
from nightly_topn.config import RunParams, event_weights
from nightly_topn.errors import BadInput, MissingPartition
from nightly_topn.storage import Storage, as_date, read_table, write_table

log = logging.getLogger(__name__)


def _validated_events(store: Storage, day: dt.date):
    """The raw gate's accepted rows of ``day`` when they belong to the landed file, else raw."""
    from nightly_topn.jobs.validate import gated_events

    return gated_events(store, day) or store.partition("raw", day) / "events.parquet"


def load_window(store: Storage, date: dt.date, window_days: int) -> tuple[pd.DataFrame, list[str]]:
    first = date - dt.timedelta(days=window_days - 1)
    days = [d for d in store.dates("raw") if first <= d <= date]
    if date not in days:
        raise MissingPartition(f"raw partition for {date} is missing under {store.root / 'raw'}")
    paths = [_validated_events(store, d) for d in days]
    unvalidated = [d.isoformat() for d, p in zip(days, paths) if p.parent.parent.name == "raw"]
    if unvalidated:
        log.warning("preprocess %s: %d day(s) of the window were not through the raw gate, read as landed: %s",
                    date, len(unvalidated), ", ".join(unvalidated[-5:]))
    frame = pa.concat_tables([read_table(p, schema=None) for p in paths], promote_options="permissive").to_pandas()
    return frame, [str(p) for p in paths]


def new_items(attributes: pa.Table, raw_pairs: pd.DataFrame, users: np.ndarray, warm_ids: np.ndarray,
              popularity: np.ndarray, date: dt.date, days: int) -> tuple[pa.Table, dict]:
    """``schemas.NEW_ITEMS``: the attribute table's items outside the warm catalogue released (else
    first seen in the window) within the ``days`` days up to ``date``, each with its top warm
    neighbours; ``raw_pairs`` are the window's (user, item) pairs before the rare-item filter (the
    users who already met a new item). Items sharing no attribute token with a warm item are left
    out (counted). Equal similarities prefer the more popular warm neighbour."""
    from nightly_topn import cold_start

    attrs = cold_start.catalogue(attributes)
    ids = attrs.column("item_id").to_numpy(zero_copy_only=False)
    first_event = raw_pairs.groupby("item_id")["first_time"].min()
    # reindex, not Series.map: map by an empty Series (no pair outside the catalogue) casts to float and fails
    first_seen = attrs.column("release_time").to_pandas().fillna(first_event.reindex(ids).reset_index(drop=True))
    end = pd.Timestamp(date + dt.timedelta(days=1), tz="UTC")
    recent = ((first_seen >= end - pd.Timedelta(days=days)) & (first_seen < end)).to_numpy()
    candidates = np.flatnonzero(recent & ~np.isin(ids, warm_ids))
    vectors = cold_start.attribute_matrix(cold_start.rows_of(attrs, np.concatenate([warm_ids, ids[candidates]])))
    n_warm = len(warm_ids)
    indptr, warm_index, weight = cold_start.neighbours(vectors[n_warm:], vectors[:n_warm], prior=popularity)
    has = np.diff(indptr) > 0
    kept = candidates[has]
    new_ids = ids[kept]
    seen = raw_pairs[raw_pairs["item_id"].isin(new_ids) & raw_pairs["user_id"].isin(users)]
    seen_by_item = sp.csr_matrix((np.ones(len(seen), np.float32),
                                  (np.searchsorted(new_ids, seen["item_id"]), np.searchsorted(users, seen["user_id"]))),
                                 shape=(len(new_ids), len(users)))
    seen_by_item.sum_duplicates()
    table = cold_start.new_item_table(new_ids, first_seen.to_numpy()[kept], np.concatenate([[0], indptr[1:][has]]),
                                      warm_index, weight, seen_by_item.indptr, seen_by_item.indices)
    stats = {"days": days, "candidates": int(len(candidates)), "with_neighbours": int(len(kept)),
             "without_attribute_overlap": int(len(candidates) - len(kept)),
             "neighbours_per_item": float(np.diff(table.column("neighbors").combine_chunks().offsets.to_numpy()).mean())
             if len(kept) else 0.0,
             "already_seen_pairs": int(seen_by_item.nnz)}
    return table, stats


def prepare(events: pd.DataFrame, date: dt.date, params: RunParams,
            item_attributes: pa.Table | None = None) -> dict[str, pd.DataFrame]:
    end = pd.Timestamp(date + dt.timedelta(days=1), tz="UTC")
    stats = {"events_in": len(events)}
    events = events[events["event_time"] < end]
    events = events.dropna(subset=["user_id", "item_id", "weight"])
    type_weights = event_weights()
    events = events[events["event_type"].isin(list(type_weights)) & (events["weight"] >= 0)]
    # Ids become dense codes once (sorted: code order = id order), so deduplication, aggregation and
    # the filters hash and sort integers: at 20M events this halved the job's time and memory.
    user_code, user_ids = pd.factorize(events["user_id"], sort=True)
    item_code, item_ids = pd.factorize(events["item_id"], sort=True)
    type_code, type_names = pd.factorize(events["event_type"])
    events = pd.DataFrame({"u": user_code.astype(np.int32), "i": item_code.astype(np.int32),
                           "type": type_code.astype(np.int8), "event_time": events["event_time"].array,
                           "weight": events["weight"].to_numpy(dtype=np.float32)})
    del user_code, item_code, type_code
    events = events.drop_duplicates(["u", "i", "type", "event_time"])
    stats["events_clean"] = len(events)
    stats["event_weights"] = type_weights
    # confidence = the type's weight x the event's own weight (a play count, a quantity, the stars)
    conf = np.asarray([type_weights[name] for name in type_names], dtype=np.float32)[events["type"].to_numpy()]
    conf = conf * events["weight"].to_numpy()
    if params.recency_half_life_days > 0:  # halves every half-life before the end of the run date
        age_days = (end - events["event_time"]).dt.total_seconds().to_numpy() / 86_400.0
        conf = conf * np.exp2(-age_days / params.recency_half_life_days).astype("float32")
    pairs = (
        events.assign(confidence=conf)
        .groupby(["u", "i"], sort=False)
        .agg(confidence=("confidence", "sum"), n_events=("event_time", "size"),
             first_time=("event_time", "min"), last_time=("event_time", "max"))
        .reset_index()
    )
    pairs = pairs[pairs["confidence"] > 0]
    raw_pairs = pairs
    for _ in range(2):  # filtering users can drop items below the threshold and vice versa
        item_n = np.bincount(pairs["i"].to_numpy(), minlength=len(item_ids))
        pairs = pairs[item_n[pairs["i"].to_numpy()] >= params.min_item_interactions]
        user_n = np.bincount(pairs["u"].to_numpy(), minlength=len(user_ids))
        pairs = pairs[user_n[pairs["u"].to_numpy()] >= params.min_user_interactions]
    if pairs.empty:
        raise BadInput(f"no interactions left for {date} after filtering ({stats})")

    user_rank, item_rank = np.unique(pairs["u"].to_numpy()), np.unique(pairs["i"].to_numpy())
    users, items = user_ids.take(user_rank).to_numpy(), item_ids.take(item_rank).to_numpy()
    pairs = pairs.assign(
        user_index=np.searchsorted(user_rank, pairs["u"].to_numpy()).astype("int32"),
        item_index=np.searchsorted(item_rank, pairs["i"].to_numpy()).astype("int32"),
    )
    times = events["event_time"].astype("int64").to_numpy()
    cutoff_us = np.percentile(times, params.holdout_quantile * 100) if len(times) else 0
    cutoff = pd.Timestamp(int(cutoff_us), unit="us", tz="UTC")
    late = pairs["first_time"] >= cutoff
    train_users = set(pairs.loc[~late, "user_index"])
    train_items = set(pairs.loc[~late, "item_index"])
    evaluable = late & pairs["user_index"].isin(train_users) & pairs["item_index"].isin(train_items)
    pairs["split"] = np.where(~late, "train", np.where(evaluable, "holdout", "late"))
    pairs = pairs.sort_values(["user_index", "item_index"], kind="stable")
    stats.update(users=len(users), items=len(items), pairs=len(pairs), holdout_cutoff=cutoff.isoformat(),
                 train_pairs=int((~late).sum()), holdout_pairs=int(evaluable.sum()))
    prepared = {
        "interactions": pairs[[f.name for f in schemas.INTERACTIONS]],
        "user_map": pd.DataFrame({"user_index": np.arange(len(users), dtype="int32"), "user_id": users}),
        "item_map": pd.DataFrame({"item_index": np.arange(len(items), dtype="int32"), "item_id": items}),
        "stats": stats,
    }
    if item_attributes is not None and params.new_item_days > 0:
        popularity = np.bincount(pairs["item_index"].to_numpy(), minlength=len(items))
        # new items are outside the catalogue: only the pairs of items the filters dropped concern them
        outside = raw_pairs[~np.isin(raw_pairs["i"].to_numpy(), item_rank)]
        named = pd.DataFrame({"user_id": user_ids.take(outside["u"].to_numpy()).to_numpy(),
                              "item_id": item_ids.take(outside["i"].to_numpy()).to_numpy(),
                              "first_time": outside["first_time"].array})
        prepared["new_items"], stats["new_items"] = new_items(item_attributes, named, users, items, popularity,
                                                              date, params.new_item_days)
    return prepared


def item_categories(items: pa.Table | None, catalogue: np.ndarray) -> pa.Table | None:
    """``schemas.ITEM_CATEGORIES`` of the catalogue (warm then new items, in index order) from the
    landed item attributes; None without attributes or categories."""
    if items is None or "categories" not in items.column_names:
        return None
    table = items.select(["item_id", "categories"]).filter(pc.is_valid(items.column("categories")))
    lists = table.column("categories").combine_chunks()
    owner = pd.Index(catalogue).get_indexer(table.column("item_id").to_numpy(zero_copy_only=False))
    rows = owner[pc.list_parent_indices(lists).to_numpy()]
    names = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({"item_index": rows, "category": names})
    frame = frame[(frame["item_index"] >= 0) & frame["category"].notna() & (frame["category"] != "")]
    frame = frame.drop_duplicates().sort_values(["item_index", "category"], kind="stable")
    if frame.empty:
        return None
    return pa.Table.from_pandas(frame.astype({"item_index": "int32"}), schema=schemas.ITEM_CATEGORIES,
                                preserve_index=False)


#: Rows per row group of ``interactions.parquet``: a top-N range of 8192 users (~1.2M
#: interactions at the ML-20M shape) reads ~10 of them, ~10% more rows than it needs.
INTERACTIONS_ROW_GROUP = 128 * 1024


def preprocess(date, *, root=None, params: RunParams = RunParams()) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    events, inputs = load_window(store, date, params.train_window_days)
    raw = store.partition("raw", date)
    landed = {name: read_table(raw / f"{name}.parquet") if (raw / f"{name}.parquet").is_file() else None
              for name in ("items", "users", "rules")}
    prepared = prepare(events, date, params, landed["items"] if params.new_item_days > 0 else None)
    schemas_by_name = {"interactions": schemas.INTERACTIONS, "user_map": schemas.USER_MAP, "item_map": schemas.ITEM_MAP}
    tables = {name: pa.Table.from_pandas(prepared[name], schema=schema, preserve_index=False)
              for name, schema in schemas_by_name.items()}
    catalogue = prepared["item_map"]["item_id"].to_numpy()
    if "new_items" in prepared:
        tables["new_items"] = prepared["new_items"]
        catalogue = np.concatenate([catalogue, prepared["new_items"].column("item_id").to_numpy(zero_copy_only=False)])
        inputs = [*inputs, str(raw / "items.parquet")]
    categories = item_categories(landed["items"], catalogue)
    if categories is not None:  # what diversity (the metric, MMR) compares items by
        tables["item_categories"] = categories
    resolved = rules.resolve(landed["rules"], landed["items"], landed["users"], prepared["user_map"]["user_id"].to_numpy(),
                             catalogue, date)
    if resolved is not None:  # the run date's rules in index space, applied by the top-N kernel
        tables["rules"], prepared["stats"]["rules"] = resolved
        inputs = [*inputs, *(str(raw / f"{name}.parquet") for name in ("rules", "users") if landed[name] is not None)]
    with store.staged(store.partition("features", date)) as stage:
        for name, table in tables.items():
            # interactions: sorted by user in row groups of INTERACTIONS_ROW_GROUP rows, so the
            # top-N workers read only the row groups of their user ranges (pipelines' History).
            write_table(table, stage / f"{name}.parquet",
                        **({"row_group_size": INTERACTIONS_ROW_GROUP} if name == "interactions" else {}))
        store.write_manifest(stage, producer="preprocess", date=date, inputs=inputs, tables=tables,
                             extra={"stats": prepared["stats"], "params": params.__dict__})
    log.info("preprocess %s: %s", date, prepared["stats"])
    return {"date": date.isoformat(), **prepared["stats"]}
