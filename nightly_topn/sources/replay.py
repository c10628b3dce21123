"""Replay a timestamped dataset as daily partitions, so history can run (and backfill) day by day."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nightly_topn import schemas
from nightly_topn.errors import BadInput

_DAY_US = 86_400_000_000


class ReplaySource:
    """Serves ``events_for(D)`` as the rows of a full events table whose time falls on day D."""

    def __init__(self, events: pa.Table, users: pa.Table | None = None, items: pa.Table | None = None, *, name="replay",
                 rules: pa.Table | None = None):
        self.name = name
        events = schemas.conform(events, schemas.EVENTS, source=name, check_nulls=False)
        missing = events.column("event_time").null_count
        if missing:  # it would fall on no day: silently never served
            raise BadInput(f"{name}: {missing} of {events.num_rows} event(s) have no event_time, so they "
                           f"cannot be replayed on any day")
        micros = pc.cast(events.column("event_time"), pa.int64()).to_numpy()
        order = np.argsort(micros, kind="stable")
        self._events = events.take(order)
        self._days = micros[order] // _DAY_US
        self._users = users
        self._items = items
        self._rules = rules

    def first_date(self) -> dt.date | None:
        if not len(self._days):
            return None
        return dt.date(1970, 1, 1) + dt.timedelta(days=int(self._days[0]))

    def last_date(self) -> dt.date | None:
        if not len(self._days):
            return None
        return dt.date(1970, 1, 1) + dt.timedelta(days=int(self._days[-1]))

    def events_for(self, date: dt.date) -> pa.Table:
        day = (date - dt.date(1970, 1, 1)).days
        lo, hi = np.searchsorted(self._days, [day, day + 1])
        return self._events.slice(lo, hi - lo)

    def users(self, date: dt.date) -> pa.Table | None:
        return self._users

    def items(self, date: dt.date) -> pa.Table | None:
        return self._items

    def rules(self, date: dt.date) -> pa.Table | None:
        return self._rules
