"""A landing folder of CSV/Parquet event files, as upstream systems drop them.

Two layouts are understood:

* ``PATH/dt=YYYY-MM-DD/*.csv|*.parquet`` — one folder per day (the daily-drop layout); a
  missing day folder is a clear error, because "no file arrived" must not look like "no events".
* ``PATH/*.csv|*.parquet`` — one flat history, replayed by ``event_time``.

Extra columns are dropped and column order does not matter; types are cast to the contract,
and a file that cannot be read is reported by name.
"""
from __future__ import annotations

import datetime as dt
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nightly_topn import schemas
from nightly_topn.sources.replay import ReplaySource

_ATTRIBUTE_FILES = {"users": schemas.USERS, "items": schemas.ITEMS}


class MissingPartitionError(FileNotFoundError):
    """The landing folder has no data for the requested day."""


def read_event_file(path: Path) -> pa.Table:
    """Read one landed file and cast it to the events contract (nulls kept for the gate)."""
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={"user_id": pa.string(), "item_id": pa.string(), "event_type": pa.string()},
                    timestamp_parsers=[pacsv.ISO8601],
                ),
            )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read landed file {path}: {exc}") from exc
    if "event_time" in table.column_names and pa.types.is_timestamp(table.schema.field("event_time").type):
        if table.schema.field("event_time").type.tz is None:
            table = table.set_column(
                table.schema.get_field_index("event_time"),
                "event_time",
                table.column("event_time").cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
            )
    return schemas.conform(table, schemas.EVENTS, source=str(path), check_nulls=False)


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".csv", ".parquet") and p.stem not in _ATTRIBUTE_FILES)


class LandingSource:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = f"landing:{self.path}"
        if not self.path.is_dir():
            raise FileNotFoundError(f"landing folder {self.path} does not exist")
        self.daily = any(p.is_dir() and p.name.startswith("dt=") for p in self.path.iterdir())

    @cached_property
    def _replay(self) -> ReplaySource:
        files = _data_files(self.path)
        if not files:
            raise FileNotFoundError(f"landing folder {self.path} has no .csv or .parquet event files")
        return ReplaySource(pa.concat_tables([read_event_file(f) for f in files]), name=self.name)

    def first_date(self) -> dt.date | None:
        if self.daily:
            days = sorted(p.name[3:] for p in self.path.iterdir() if p.name.startswith("dt="))
            return dt.date.fromisoformat(days[0]) if days else None
        return self._replay.first_date()

    def events_for(self, date: dt.date) -> pa.Table:
        if not self.daily:
            return self._replay.events_for(date)
        folder = self.path / f"dt={date.isoformat()}"
        if not folder.is_dir():
            raise MissingPartitionError(f"landing folder {self.path} has no partition dt={date.isoformat()}")
        files = _data_files(folder)
        if not files:
            return schemas.EVENTS.empty_table()
        return pa.concat_tables([read_event_file(f) for f in files], promote_options="permissive")

    def _attributes(self, name: str) -> pa.Table | None:
        for suffix in (".parquet", ".csv"):
            path = self.path / f"{name}{suffix}"
            if path.is_file():
                table = pq.read_table(path) if suffix == ".parquet" else pacsv.read_csv(path)
                return schemas.conform(table, _ATTRIBUTE_FILES[name], source=str(path))
        return None

    def users(self, date: dt.date) -> pa.Table | None:
        return self._attributes("users")

    def items(self, date: dt.date) -> pa.Table | None:
        return self._attributes("items")
