"""One storage layout, atomic writes, manifests, and the published pointer.

Layout under the root (see README)::

    raw/dt=YYYY-MM-DD/events.parquet         landed events of that day
    quarantine/dt=YYYY-MM-DD/...             rows rejected by the raw gate, with reasons
    clean/dt=YYYY-MM-DD/events.parquet       the raw gate's accepted rows (what preprocess reads)
    features/dt=YYYY-MM-DD/...               prepared training data for the run of that day
    models/dt=YYYY-MM-DD/...                 trained models and their metrics
    topn/dt=YYYY-MM-DD/v=VERSION/part-*.parquet   top-N output, one immutable version per attempt
    reports/dt=YYYY-MM-DD/...                validation results, metrics, data docs
    topn/CURRENT.json                        the published pointer readers follow

Every partition is written to a staging directory next to its target and renamed into place,
so a partition is either absent or complete. Each carries ``_manifest.json``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from nightly_topn import __version__
from nightly_topn.config import storage_root

KINDS = ("raw", "quarantine", "clean", "features", "models", "topn", "reports", "alerts")
MANIFEST = "_manifest.json"
POINTER = "CURRENT.json"


def as_date(value: str | dt.date | dt.datetime) -> dt.date:
    """Parse ``YYYY-MM-DD`` (or pass through a date) into a ``datetime.date``."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ValueError(f"not a date (expected YYYY-MM-DD): {value!r}") from exc


@dataclass(frozen=True)
class Storage:
    """Paths and atomic operations under one storage root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Storage":
        return cls(storage_root(root))

    # -- paths -------------------------------------------------------------------------------
    def partition(self, kind: str, date: str | dt.date) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown storage kind {kind!r}; expected one of {KINDS}")
        return self.root / kind / f"dt={as_date(date).isoformat()}"

    def dates(self, kind: str) -> list[dt.date]:
        """Dates with a complete (manifested) partition of ``kind``, oldest first."""
        base = self.root / kind
        if not base.is_dir():
            return []
        found = []
        for child in base.iterdir():
            if child.name.startswith("dt=") and (child / MANIFEST).is_file():
                found.append(as_date(child.name[3:]))
        return sorted(found)

    def inside(self, path: str | os.PathLike) -> Path:
        """Resolve ``path`` relative to the root and refuse anything that escapes it."""
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ValueError(f"path {str(path)!r} escapes the storage root {self.root}")
        return resolved

    # -- atomic writes -----------------------------------------------------------------------
    @contextmanager
    def staged(self, target: Path) -> Iterator[Path]:
        """Yield a staging directory; on success it atomically replaces ``target``.

        On error the staging directory is removed and ``target`` is left untouched.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = target.parent / f".staging-{target.name}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        replace_dir(stage, target)

    def write_manifest(self, directory: Path, *, producer: str, date, inputs=(), tables=None, extra=None):
        """Describe a partition: what made it, from what, and what it holds (rows and schema)."""
        manifest = {
            "date": as_date(date).isoformat(),
            "producer": producer,
            "code_version": __version__,
            "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "inputs": [str(i) for i in inputs],
            "tables": {},
        }
        for name, table in (tables or {}).items():
            manifest["tables"][name] = {
                "rows": table.num_rows,
                "schema": [f"{f.name}: {f.type}" for f in table.schema],
            }
        manifest.update(extra or {})
        write_json(directory / MANIFEST, manifest)
        return manifest

    # -- published pointer -------------------------------------------------------------------
    def pointer_path(self) -> Path:
        return self.root / "topn" / POINTER

    def published(self) -> dict | None:
        """The pointer readers follow, or None when nothing was published yet."""
        path = self.pointer_path()
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def publish(self, date, version_dir: Path, *, allow_older: bool = False, extra=None) -> dict:
        """Switch the pointer to ``version_dir`` (atomic rename of the pointer file).

        Refuses to move the pointer to an older date than the live one unless ``allow_older``,
        so a backfill of history does not replace today's lists with last month's.
        """
        date = as_date(date)
        current = self.published()
        if current and as_date(current["date"]) > date and not allow_older:
            return {**current, "kept": True, "reason": f"live date {current['date']} is newer than {date}"}
        pointer = {
            "date": date.isoformat(),
            "path": str(version_dir.relative_to(self.root)),
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        write_json(self.pointer_path(), pointer)
        return pointer


def replace_dir(stage: Path, target: Path) -> None:
    """Atomically move ``stage`` to ``target``, replacing a previous ``target`` if any."""
    if target.exists():
        trash = target.parent / f".trash-{target.name}-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
        os.replace(stage, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, target)


def write_json(path: Path, payload) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_table(table: pa.Table, path: Path, **kwargs) -> None:
    """Write Parquet with zstd compression (callers write inside a staged directory)."""
    kwargs.setdefault("compression", "zstd")
    pq.write_table(table, path, **kwargs)


def read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file, raising a message that names the file when it is unreadable."""
    try:
        return pq.read_table(path, schema=schema)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read Parquet file {path}: {exc}") from exc
