"""A landing folder of CSV/Parquet event files, as upstream systems drop them.

Two layouts are understood:

* ``PATH/dt=YYYY-MM-DD/*.csv|*.csv.gz|*.csv.bz2|*.parquet`` — one folder per day (the
  daily-drop layout); a missing day folder is a clear error, because "no file arrived" must not
  look like "no events". Every other file in a day folder is refused by name (nothing is
  silently skipped), except hidden ones whose name starts with ``.`` or ``_`` (``_SUCCESS``
  markers, editor files). ``users.*`` / ``items.*`` attribute files and the candidate rules ``rules.*``
  (``schemas.RULES``) belong in ``PATH`` itself.
* ``PATH/*.csv|*.csv.gz|*.csv.bz2|*.parquet`` — one flat history, replayed by ``event_time``
  (other files in ``PATH`` are not read).

Extra columns are dropped and column order does not matter; types are cast to the contract.
``event_time`` may be:

* an ISO-8601 timestamp; one with an offset (``Z``, ``+02:00``) is converted to UTC, and a
  naive one (no offset) is taken as UTC;
* an integer (CSV digits, or a Parquet integer column): always epoch **seconds**. Integers that
  would be after the year 3000 as seconds are refused (they look like milliseconds or
  microseconds) rather than guessed at.

A file that cannot be read, and a symbolic link (file or day folder) that resolves outside the
landing folder, are refused with ``BadInput`` naming the file and the kind of problem; the
message never quotes the file's content (the original error, which may, is chained for the
debug log).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nightly_topn import schemas
from nightly_topn.errors import BadInput, MissingPartition
from nightly_topn.sources.replay import ReplaySource

_ATTRIBUTE_FILES = {"users": schemas.USERS, "items": schemas.ITEMS, "rules": schemas.RULES}
#: File name endings read as CSV (pyarrow decompresses ``.gz`` / ``.bz2`` by extension).
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet",)
#: 3000-01-01T00:00:00Z in epoch seconds: an integer ``event_time`` beyond it is not seconds.
MAX_EPOCH_SECONDS = 32_503_680_000
_DT_FOLDER = re.compile(r"dt=[0-9]{4}-[0-9]{2}-[0-9]{2}")


class MissingPartitionError(MissingPartition):
    """The landing folder has no data for the requested day."""


def _ending(path: Path) -> str | None:
    """The recognised data-file ending of ``path`` (``.csv``, ``.csv.gz``, ...), or None."""
    name = path.name.lower()
    return next((s for s in (*CSV_SUFFIXES, *PARQUET_SUFFIXES) if name.endswith(s)), None)


def _stem(path: Path) -> str:
    ending = _ending(path)
    return path.name[: -len(ending)] if ending else path.stem


def _hidden(path: Path) -> bool:
    return path.name.startswith((".", "_"))


def read_event_file(path: Path) -> pa.Table:
    """Read one landed file and cast it to the events contract (nulls kept for the gate)."""
    path = Path(path)
    if _ending(path) in PARQUET_SUFFIXES:
        table = _read(path, pq.read_table)
    else:
        table = _read(path, lambda p: pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(
            column_types={"user_id": pa.string(), "item_id": pa.string(), "event_type": pa.string()},
            timestamp_parsers=[pacsv.ISO8601])))
    if "event_time" in table.column_names:
        index = table.schema.get_field_index("event_time")
        table = table.set_column(index, "event_time", _event_time(table.column("event_time"), path))
    return schemas.conform(table, schemas.EVENTS, source=str(path), check_nulls=False)


def _read(path: Path, reader) -> pa.Table:
    try:
        return reader(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"cannot read landed file {path}: {_problem(exc, path)}") from exc


def _event_time(column: pa.ChunkedArray, path: Path) -> pa.ChunkedArray:
    """``event_time`` as ``timestamp[us, UTC]`` where its type says how (see the module docstring);
    other types are left to the contract cast, which names them."""
    target = schemas.EVENTS.field("event_time").type
    kind = column.type
    if pa.types.is_integer(kind):
        seconds = pc.cast(column, pa.int64())
        beyond = pc.sum(pc.greater(pc.abs(seconds), MAX_EPOCH_SECONDS)).as_py() or 0
        if beyond:
            raise BadInput(
                f"{path}: column 'event_time' holds integers, which are read as epoch seconds, but {beyond} "
                f"of {len(column)} row(s) would be after the year 3000 as seconds (looks like "
                f"milliseconds/microseconds); land epoch seconds or ISO-8601 timestamps")
        return pc.multiply(seconds, 1_000_000).cast(pa.timestamp("us")).cast(target)
    if pa.types.is_floating(kind):
        raise BadInput(f"{path}: column 'event_time' has type {kind}: expected ISO-8601 timestamps or "
                       f"integer epoch seconds")
    if pa.types.is_timestamp(kind):
        if kind.tz is None:  # naive: taken as UTC
            column = column.cast(pa.timestamp(kind.unit, tz="UTC"))
        # ns -> us only drops sub-microsecond digits (it cannot overflow)
        return column.cast(target, safe=kind.unit != "ns")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return column.cast(target)  # every value has an offset
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # naive values (taken as UTC), mixed with offsets, or not timestamps at all
        import pandas as pd

        values = column.to_pandas()
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        bad = int((values.notna() & parsed.isna()).sum())
        if bad:
            raise BadInput(f"{path}: column 'event_time': {bad} of {len(column)} row(s) are not ISO-8601 "
                           f"timestamps (a column holds either ISO-8601 timestamps or integer epoch seconds)")
        return pa.chunked_array([pa.array(parsed.dt.as_unit("us"), type=target)])
    return column


# -- what an unreadable file is said to be: never its content ---------------------------------
def _problem(exc: BaseException, path: Path) -> str:
    """The kind of problem behind ``exc`` in words, without any of the file's content.

    Arrow's CSV messages end with the offending row or value (``Expected 5 columns, got 3:
    <row>``, ``invalid value '<value>'``), which may be a secret: only the parts before those
    markers, and counts we derive ourselves, are kept.
    """
    text = str(exc)
    where = re.search(r"In CSV column #(\d+)", text)
    column = f" in CSV column #{int(where.group(1)) + 1}" if where else ""
    row = re.search(r"Row #(\d+)", text)
    at = f" at row {row.group(1)}" if row else ""
    fields = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if fields:
        expected, got = int(fields.group(1)), int(fields.group(2))
        counted = _count_malformed(path, expected)
        if counted:
            return (f"CSV parse error: {counted[0]} row(s) do not have the header's {expected} fields "
                    f"(the first at line {counted[1]} has {got})")
        return f"CSV parse error: a row{at} has {got} fields, the header has {expected}"
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in text or "UTF-8" in text:
        return f"not UTF-8 text (invalid UTF8 data{column})"
    if "Empty CSV file" in text:
        return "empty file (not even a header line)"
    conversion = re.search(r"CSV conversion error to ([^'\":\n]+)", text)
    if conversion:
        return (f"a value{column}{at} cannot be read as {conversion.group(1)}, the type the first rows "
                f"suggested (mixed values in one column)")
    if "Permission denied" in text or isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError)) or "No such file" in text:
        return "the file vanished while reading it (or is not a file)"
    if _ending(path) in PARQUET_SUFFIXES:
        return "not a readable Parquet file (corrupted, truncated or using an unsupported feature)"
    if re.search(r"zlib|gzip|bz2|BZ2|inflate|decompress", text):
        return f"cannot decompress it as {_ending(path) or path.suffix} (corrupted, truncated or not compressed)"
    head = text.split(":", 1)[0].strip()
    if head and len(head) <= 60 and not re.search(r"['\"\n,]", head):
        return f"{head} (details in the debug log)"
    return f"{type(exc).__name__} (details in the debug log)"


def _count_malformed(path: Path, expected: int) -> tuple[int, int] | None:
    """(rows whose field count differs from the header's, line of the first one), or None."""
    try:
        with pa.input_stream(str(path), compression="detect") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
            reader = csv.reader(text)
            next(reader, None)  # the header
            bad, first = 0, None
            for record in reader:
                if record and len(record) != expected:
                    bad += 1
                    first = first or reader.line_num
            return (bad, first) if bad else None
    except Exception:  # noqa: BLE001 - counting is best effort; the caller still refuses the file
        return None


# -- the folder -----------------------------------------------------------------------------
class LandingSource:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = f"landing:{self.path}"
        if not self.path.is_dir():
            raise MissingPartition(f"landing folder {self.path} does not exist")
        self.root = self.path.resolve()
        self.daily = any(p.is_dir() and p.name.startswith("dt=") for p in self.path.iterdir())

    def _inside(self, path: Path) -> Path:
        """``path`` itself when it (a symlink's target included) stays inside the landing folder."""
        try:
            resolved = path.resolve()
        except (RuntimeError, OSError) as exc:  # a symlink loop
            raise BadInput(f"{path} is a symbolic link that cannot be resolved (a loop?)") from exc
        if resolved != self.root and self.root not in resolved.parents:
            raise BadInput(f"{path} is a symbolic link to {resolved}, outside the landing folder {self.root}: "
                           f"refused (copy the data into the landing folder)")
        if not resolved.exists():
            raise BadInput(f"{path} is a broken symbolic link (its target {resolved} does not exist)")
        return path

    def _files(self, folder: Path, *, strict: bool) -> list[Path]:
        """The event files of ``folder``. ``strict`` (a day folder): anything else is refused by name."""
        files = []
        for entry in sorted(folder.iterdir()):
            if _hidden(entry):
                continue
            ending = _ending(entry)
            if not strict:
                if ending and _stem(entry) not in _ATTRIBUTE_FILES and entry.is_file():
                    files.append(self._inside(entry))
                continue
            self._inside(entry)
            if entry.is_dir():
                raise BadInput(f"{entry} is a folder inside the day folder {folder}: expected only event files "
                               f"({', '.join((*CSV_SUFFIXES, *PARQUET_SUFFIXES))})")
            if not ending:
                raise BadInput(f"{entry} is not an event file: a day folder holds only "
                               f"{', '.join((*CSV_SUFFIXES, *PARQUET_SUFFIXES))} files (names starting with "
                               f"'.' or '_' are ignored)")
            if _stem(entry) in _ATTRIBUTE_FILES:
                raise BadInput(f"{entry} is an attribute file inside a day folder, where it would not be read: "
                               f"put it in the landing folder {self.path} itself")
            files.append(entry)
        return files

    @cached_property
    def _replay(self) -> ReplaySource:
        files = self._files(self.path, strict=False)
        if not files:
            raise MissingPartition(f"landing folder {self.path} has no {', '.join((*CSV_SUFFIXES, *PARQUET_SUFFIXES))} "
                                   f"event files")
        return ReplaySource(pa.concat_tables([read_event_file(f) for f in files]), name=self.name)

    def first_date(self) -> dt.date | None:
        if self.daily:
            folders = sorted(p for p in self.path.iterdir() if p.name.startswith("dt="))
            for folder in folders:
                if not _DT_FOLDER.fullmatch(folder.name):
                    raise BadInput(f"{folder}: day folders are named dt=YYYY-MM-DD")
            try:
                return dt.date.fromisoformat(folders[0].name[3:]) if folders else None
            except ValueError:
                raise BadInput(f"{folders[0]}: not a calendar day (day folders are named dt=YYYY-MM-DD)") from None
        return self._replay.first_date()

    def events_for(self, date: dt.date) -> pa.Table:
        if not self.daily:
            return self._replay.events_for(date)
        folder = self.path / f"dt={date.isoformat()}"
        if not folder.is_dir() and not folder.is_symlink():
            raise MissingPartitionError(f"landing folder {self.path} has no partition dt={date.isoformat()}")
        self._inside(folder)
        files = self._files(folder, strict=True)
        if not files:
            return schemas.EVENTS.empty_table()
        return pa.concat_tables([read_event_file(f) for f in files], promote_options="permissive")

    def _attributes(self, name: str) -> pa.Table | None:
        for suffix in (*PARQUET_SUFFIXES, *CSV_SUFFIXES):
            path = self.path / f"{name}{suffix}"
            if path.is_file() or path.is_symlink():
                self._inside(path)
                table = _read(path, pq.read_table if suffix in PARQUET_SUFFIXES else pacsv.read_csv)
                if name == "rules" and suffix in CSV_SUFFIXES:  # CSV has no null: an empty field is one
                    table = pa.table({c: pc.if_else(pc.equal(table[c], ""), pa.scalar(None, table[c].type), table[c])
                                      if pa.types.is_string(table[c].type) else table[c] for c in table.column_names})
                # rules keep their nulls for the raw gate to judge (a rule without its user or segment)
                return schemas.conform(table, _ATTRIBUTE_FILES[name], source=str(path), check_nulls=name != "rules")
        return None

    def users(self, date: dt.date) -> pa.Table | None:
        return self._attributes("users")

    def items(self, date: dt.date) -> pa.Table | None:
        return self._attributes("items")

    def rules(self, date: dt.date) -> pa.Table | None:
        return self._attributes("rules")
