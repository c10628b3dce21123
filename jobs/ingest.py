"""Ingest: land the source's events for the run date (and any missing day of the window) as raw partitions.

Point in time: the run for day D lands nothing after D. Days already landed are kept as they
are (idempotent) unless ``force`` re-lands the run date itself.
"""
from __future__ import annotations

import datetime as dt
import logging

from nightly_topn.config import RunParams, source_spec
from nightly_topn.sources import open_source
from nightly_topn.storage import Storage, as_date, write_table

log = logging.getLogger(__name__)


def ingest(date, *, root=None, source=None, params: RunParams = RunParams(), force: bool = False) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    src = open_source(source_spec(source))
    first = date - dt.timedelta(days=params.train_window_days - 1)
    if src.first_date():
        first = max(first, src.first_date())
    landed, kept = [], 0
    day = first
    while day <= date:
        target = store.partition("raw", day)
        if (target / "_manifest.json").is_file() and not (force and day == date):
            kept += 1
        else:
            _land(store, src, day)
            landed.append(day.isoformat())
        day += dt.timedelta(days=1)
    log.info("ingest %s from %s: landed %d day(s) %s, %d already present", date, src.name, len(landed), landed[-3:], kept)
    return {"date": date.isoformat(), "source": src.name, "landed": landed, "already_present": kept}


def _land(store: Storage, src, day: dt.date) -> None:
    events = src.events_for(day)
    tables = {"events": events}
    with store.staged(store.partition("raw", day)) as stage:
        write_table(events, stage / "events.parquet")
        rules = getattr(src, "rules", None)  # optional in the Source protocol
        for name, table in (("users", src.users(day)), ("items", src.items(day)),
                            ("rules", rules(day) if rules else None)):
            if table is not None:
                write_table(table, stage / f"{name}.parquet")
                tables[name] = table
        store.write_manifest(stage, producer="ingest", date=day, inputs=[src.name], tables=tables)
