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
    similar/dt=YYYY-MM-DD/v=VERSION/, similar/CURRENT.json   similar items: versions and their own pointer

Every partition is written to a staging directory next to its target, flushed to disk
(``fsync`` of its files and of the parent directory) and renamed into place, so a partition is
either absent or complete, also after a power loss. Each carries ``_manifest.json``. A staging
directory names the host and process that writes it, so the one a killed run left behind is
recognised (its process is gone) and swept by the next writer of that date.

A top-N version is published only after its gate passed: ``validate_topn`` records its verdict
in the version (``_gate.json``, bound to the manifest it checked), and the pointer can only be
moved to a version whose verdict passed and still matches (``Storage.gated_version``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
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
from nightly_topn.errors import BadInput, ConfigError, MissingPartition, PublishRefused

KINDS = ("raw", "quarantine", "clean", "features", "models", "topn", "similar", "reports", "alerts")
#: What is published, each with its own versions, gate verdicts and pointer: name in messages, its gate.
PRODUCTS = {"topn": ("top-N", "validate_topn"), "similar": ("similar-items", "validate_similar")}
MANIFEST = "_manifest.json"
POINTER = "CURRENT.json"
#: Every move of the pointer (publish and rollback), one JSON line each, next to the pointer.
POINTER_HISTORY = "_pointer_history.jsonl"
#: The top-N gate's verdict on one version, written into the version it checked.
VERDICT = "_gate.json"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: This host, as it appears in the names of staging directories (no dashes: they separate fields).
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def as_date(value: str | dt.date | dt.datetime) -> dt.date:
    """Parse exactly ``YYYY-MM-DD`` (or pass through a date) into a ``datetime.date``; anything
    else (``2024-03-01x``, ``2024-02-30``, ``../x``) is a ``ConfigError`` naming the value."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value)
    if not _DATE.fullmatch(text):
        raise ConfigError(f"date {text!r} refused: expected YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"date {text!r} refused: not a calendar day ({exc})") from None


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

    def dates(self, kind: str, *, holding: str | None = MANIFEST) -> list[dt.date]:
        """Dates whose partition of ``kind`` holds the file ``holding`` (by default its manifest:
        the complete partitions; None: every ``dt=`` folder), oldest first."""
        base = self.root / kind
        if not base.is_dir():
            return []
        found = []
        for child in base.iterdir():
            if child.name.startswith("dt=") and _DATE.fullmatch(child.name[3:]) \
                    and (holding is None or (child / holding).is_file()):
                found.append(as_date(child.name[3:]))
        return sorted(found)

    def inside(self, path: str | os.PathLike) -> Path:
        """Resolve ``path`` relative to the root and refuse anything that escapes it."""
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ConfigError(f"path {str(path)!r} escapes the storage root {self.root}")
        return resolved

    # -- atomic writes -----------------------------------------------------------------------
    def staged(self, target: Path):
        """``staged(target)``: a staging directory that atomically replaces ``target`` on success."""
        return staged(target)

    def sweep_stale(self, date) -> list[Path]:
        """Remove what killed writers of ``date`` left behind: staging and trash directories and
        temporary JSON files whose writing process (on this host) no longer runs. Returns them."""
        import psutil

        day = f"dt={as_date(date).isoformat()}"
        places = [self.root / kind for kind in KINDS] + [self.root / kind / day for kind in KINDS]
        places.append(self.root / "reports" / day / "gx")  # where the gates stage their GX projects
        removed = []
        for place in places:
            if not place.is_dir():
                continue
            for child in place.iterdir():
                owner = _LEFTOVER.fullmatch(child.name)
                if owner is None or (place.name != day and owner["name"] != day):
                    continue
                if owner["host"] != _HOST or psutil.pid_exists(int(owner["pid"])):
                    continue  # another machine's, or its writer still runs
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed.append(child)
        return removed

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
    def pointer_path(self, product: str = "topn") -> Path:
        return self.root / product / POINTER

    def published(self, product: str = "topn") -> dict | None:
        """The pointer readers follow, or None when nothing was published yet."""
        path = self.pointer_path(product)
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def pointer_history(self, product: str = "topn") -> list[dict]:
        """Every pointer this root has had, oldest first (``action``: publish or rollback)."""
        path = self.pointer_path(product).with_name(POINTER_HISTORY)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def rolled_back(self, product: str = "topn") -> set[str]:
        """Versions (root-relative paths) a rollback moved the pointer away from: never published again."""
        return {entry["rolled_back_from"] for entry in self.pointer_history(product) if entry.get("rolled_back_from")}

    def move_pointer(self, pointer: dict, action: str, product: str = "topn") -> dict:
        """Write ``pointer`` (atomic rename) and append it to the history. Callers hold the publish lock."""
        write_json(self.pointer_path(product), pointer)
        with self.pointer_path(product).with_name(POINTER_HISTORY).open("a") as out:
            out.write(json.dumps({**pointer, "action": action}, sort_keys=True, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())
        return pointer

    # -- top-N versions and the gate's verdict ---------------------------------------------
    def versions(self, date, product: str = "topn") -> list[Path]:
        """Complete (manifested) versions of ``date`` (top-N lists, or ``product``), oldest first."""
        base = self.partition(product, date)
        if not base.is_dir():
            return []
        return sorted(p for p in base.glob("v=*") if (p / MANIFEST).is_file())

    def newest_version(self, date, product: str = "topn") -> Path:
        versions = self.versions(date, product)
        if not versions:
            raise MissingPartition(f"no complete {PRODUCTS[product][0]} version for {as_date(date)} under "
                                   f"{self.partition(product, date)}; run {product} first")
        return versions[-1]

    def version(self, date, path: str | os.PathLike, product: str = "topn") -> Path:
        """The version directory ``path`` (absolute, or relative to the root) of ``date``; refuses
        a path outside ``topn/dt=D/`` or one that is not a complete version."""
        resolved = self.inside(path)
        if resolved.parent != self.partition(product, date) or not resolved.name.startswith("v="):
            raise ConfigError(f"version {str(path)!r} is not a {PRODUCTS[product][0]} version of {as_date(date)} "
                              f"(expected {self.partition(product, date)}/v=...)")
        if not (resolved / MANIFEST).is_file():
            raise MissingPartition(f"{PRODUCTS[product][0]} version {resolved} is missing or incomplete (no {MANIFEST})")
        return resolved

    def record_verdict(self, version: Path, *, passed: bool, result: str, reason: str = "") -> dict:
        """Write the top-N gate's verdict into ``version``, bound to the manifest it checked."""
        verdict = {"passed": passed, "manifest_sha256": _sha256(version / MANIFEST), "result": result,
                   "files": _fingerprints(version), "reason": reason[:2000],
                   "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_json(version / VERDICT, verdict)
        return verdict

    def verdict_problem(self, version: Path) -> str | None:
        """Why ``version`` may not be published (no verdict, failed, changed since), or None."""
        gate = PRODUCTS[version.parent.parent.name][1] if version.parent.parent.name in PRODUCTS else "its gate"
        path = version / VERDICT
        if not path.is_file():
            return f"{version} was never checked by {gate}"
        try:
            verdict = read_json(path)
        except ValueError:
            return f"{path} is not valid JSON"
        if not verdict.get("passed"):
            return f"{version} failed {gate}: {verdict.get('reason', '')}".split("\n")[0]
        if verdict.get("manifest_sha256") != _sha256(version / MANIFEST):
            return f"{version} changed after {gate} checked it"
        now, was = _fingerprints(version), verdict.get("files", {})
        missing = sorted(set(was) - set(now))
        if missing:
            return f"{version} lost {len(missing)} part file(s) after it was checked, e.g. {missing[0]}"
        changed = sorted(f for f in was if now[f] != was[f])
        if changed:
            return f"{version}: {len(changed)} file(s) changed after {gate} checked them, e.g. {changed[0]}"
        return None

    def newest_gated_version(self, date, product: str = "topn") -> Path:
        """The newest version of ``date`` that its gate passed (what ``lookup --date`` reads)."""
        for version in reversed(self.versions(date, product)):
            if self.verdict_problem(version) is None:
                return version
        raise MissingPartition(f"no {PRODUCTS[product][0]} version of {as_date(date)} passed {PRODUCTS[product][1]} "
                               f"(under {self.partition(product, date)})")

    def gated_version(self, date, path: str | os.PathLike | None = None, product: str = "topn") -> Path:
        """The version to publish: ``path`` when given, else the newest complete version of
        ``date``; refused (``PublishRefused``) unless the gate passed exactly that version."""
        version = self.version(date, path, product) if path else self.newest_version(date, product)
        problem = self.verdict_problem(version)
        if problem:
            raise PublishRefused(f"not publishing: {problem}; run {PRODUCTS[product][1]} on it (or {product} again)")
        return version

    def publish(self, date, version_dir: Path, *, allow_older: bool = False, extra=None, product: str = "topn") -> dict:
        """Switch the pointer to ``version_dir`` (atomic rename of the pointer file).

        Refuses a version the gate did not pass (``gated_version``). Refuses to move the pointer
        to an older date than the live one unless ``allow_older``, so a backfill of history does
        not replace today's lists with last month's.
        """
        date = as_date(date)
        version_dir = self.gated_version(date, version_dir, product)
        relative = str(version_dir.relative_to(self.root))
        if relative in self.rolled_back(product):
            raise PublishRefused(f"not publishing {relative}: a rollback took it off the air; run {product} again "
                                 f"for a new version of {date}")
        current = self.published(product)
        if current and as_date(current["date"]) > date and not allow_older:
            return {**current, "kept": True, "reason": f"live date {current['date']} is newer than {date}"}
        pointer = {
            "date": date.isoformat(),
            "path": relative,
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        return self.move_pointer(pointer, "publish", product)


#: Names of what a writer leaves while it works: ``.staging-NAME-HOST-PID-ID``, ``.trash-...``, ``.NAME.HOST-PID-ID.tmp``.
_LEFTOVER = re.compile(r"\.(?:staging-|trash-|)(?P<name>.+)[-.](?P<host>[A-Za-z0-9]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}(?:\.tmp)?")


def _fingerprints(version: Path) -> dict[str, str]:
    """``size:mtime`` of each data file of a version (part files and the index), cheap to compare."""
    out = {}
    for path in sorted(version.glob("*.parquet")):
        st = path.stat()
        out[path.name] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``target`` (named for this host and process, so a killed
    writer's is recognised by ``Storage.sweep_stale``); on success it is flushed to disk and
    atomically replaces ``target``; on error it is removed and ``target`` is left untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".staging-{target.name}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        fsync_tree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_dir(stage, target)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the directories themselves to disk."""
    for dirpath, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def replace_dir(stage: Path, target: Path) -> None:
    """Atomically move ``stage`` to ``target``, replacing a previous ``target`` if any."""
    if target.exists():
        trash = target.parent / f".trash-{target.name}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
        os.replace(stage, target)
        fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, target)
        fsync_dir(target.parent)


def write_text(path: Path, text: str) -> None:
    """Write a file atomically and durably (temp file, fsync, rename, fsync of the directory), so
    a crash or power loss leaves the old file or the new one, never an empty or partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, payload) -> None:
    """``write_text`` of ``payload`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path):
    """Read a JSON file; a missing file is ``MissingPartition``, a corrupt one ``BadInput``, both naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingPartition(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid JSON ({exc})") from None


def write_table(table: pa.Table, path: Path, **kwargs) -> None:
    """Write Parquet with zstd compression (callers write inside a staged directory)."""
    kwargs.setdefault("compression", "zstd")
    pq.write_table(table, path, **kwargs)


def read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file, raising a message that names the file when it is unreadable."""
    try:
        return pq.read_table(path, schema=schema)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"cannot read Parquet file {path}: {exc}") from exc
