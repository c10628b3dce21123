"""Validate: the raw-events gate (Great Expectations) on the run date's landed partition."""
from __future__ import annotations

import datetime as dt
import logging

from nightly_topn.config import RunParams
from nightly_topn.quality import require, run_gate
from nightly_topn.storage import Storage, as_date, read_table

log = logging.getLogger(__name__)


def validate_raw(date, *, root=None, params: RunParams = RunParams()) -> dict:
    date = as_date(date)
    store = Storage.at(root)
    path = store.partition("raw", date) / "events.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"raw partition for {date} is missing ({path}); run ingest first")
    frame = read_table(path).to_pandas()
    start = dt.datetime.combine(date, dt.time(), dt.timezone.utc)
    gate = run_gate(
        "raw_events",
        frame,
        store.partition("reports", date),
        {
            "min_time": start.isoformat(),
            "max_time": (start + dt.timedelta(days=1)).isoformat(),
            "max_weight": 1000,
        },
    )
    require(gate, f"raw events {path} ({len(frame)} rows)")
    return {"date": date.isoformat(), "rows": len(frame), "warnings": len(gate.warnings), "result": gate.result_path}
