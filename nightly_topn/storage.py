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

The root is a local path or an object-store URL (``s3://bucket/prefix``, ``gs://...``):
paths under it are ``pathlib.Path`` or universal-pathlib ``UPath`` (fsspec) objects, so the jobs'
path code is the same for both; Parquet goes through ``arrow_path`` (pyarrow's own filesystems).

On a local root every partition is written to a staging directory next to its target, flushed
to disk (``fsync`` of its files and of the parent directory) and renamed into place, so a
partition is either absent or complete, also after a power loss. Each carries
``_manifest.json``. A staging directory names the host and process that writes it, so the one a
killed run left behind is recognised (its process is gone) and swept by the next writer of that
date. An object store has no rename (docs/operations.md, "Object stores"): a version is written
once under its own unique prefix and is complete when its manifest, written last, exists; a
partition that a rerun replaces is staged on local disk and uploaded with its old manifest
deleted first and the new one written last; the pointer is replaced by a conditional write
(``If-Match`` of the ETag it was read with), so two publishers cannot interleave.

A top-N version is published only after its gate passed: ``validate_topn`` records its verdict
in the version (``_gate.json``, bound to the manifest it checked), and the pointer can only be
moved to a version whose verdict passed and still matches (``Storage.gated_version``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterator, Union

import pyarrow as pa
import pyarrow.parquet as pq

from nightly_topn import __version__
from nightly_topn.config import storage_root
from nightly_topn.errors import BadInput, ConfigError, MissingPartition, PublishRefused, RunInProgress

log = logging.getLogger(__name__)
#: A path under the root: ``pathlib.Path`` on a local root, a ``upath.UPath`` on an object store.
StoragePath = Union[Path, "upath.UPath"]  # noqa: F821

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
    """Paths and atomic operations under one storage root (a local path or an object store)."""

    root: StoragePath

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Storage":
        return cls(storage_root(root))

    @property
    def remote(self) -> bool:
        """True on an object store (no rename, no ``fsync``, no local locks)."""
        return is_remote(self.root)

    # -- paths -------------------------------------------------------------------------------
    def partition(self, kind: str, date: str | dt.date) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown storage kind {kind!r}; expected one of {KINDS}")
        return self.root / kind / f"dt={as_date(date).isoformat()}"

    def dates(self, kind: str, *, holding: str | None = MANIFEST) -> list[dt.date]:
        """Dates whose partition of ``kind`` holds the file ``holding`` (by default its manifest:
        the complete partitions; None: every ``dt=`` folder), oldest first."""
        base = self.root / kind
        if self.remote:  # one flat listing, not a request per day
            try:
                keys = base.fs.find(base.path)
            except FileNotFoundError:
                return []
            found = set()
            for key in keys:
                folder, _, rest = key[len(base.path.rstrip("/")) + 1:].partition("/")
                if folder.startswith("dt=") and _DATE.fullmatch(folder[3:]) and (holding is None or rest == holding):
                    found.add(as_date(folder[3:]))
            return sorted(found)
        if not base.is_dir():
            return []
        found = []
        for child in base.iterdir():
            if child.name.startswith("dt=") and _DATE.fullmatch(child.name[3:]) \
                    and (holding is None or (child / holding).is_file()):
                found.append(as_date(child.name[3:]))
        return sorted(found)

    def inside(self, path: str | os.PathLike) -> StoragePath:
        """Resolve ``path`` relative to the root and refuse anything that escapes it."""
        if self.remote:
            text = str(path)
            if text.startswith(str(self.root) + "/"):
                text = text[len(str(self.root)) + 1:]
            parts = [p for p in text.split("/") if p not in ("", ".")]
            if "://" in text or text.startswith("/") or ".." in parts:
                raise ConfigError(f"path {str(path)!r} escapes the storage root {self.root}")
            return self.root.joinpath(*parts) if parts else self.root
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ConfigError(f"path {str(path)!r} escapes the storage root {self.root}")
        return resolved

    def relative(self, path: StoragePath) -> str:
        """``path`` relative to the root, as the pointer and the history record it."""
        if self.remote:
            return str(path)[len(str(self.root)) + 1:]
        return str(Path(path).relative_to(self.root))

    # -- atomic writes -----------------------------------------------------------------------
    def staged(self, target: StoragePath):
        """``staged(target)``: a staging directory that atomically replaces ``target`` on success."""
        return staged(target)

    @contextmanager
    def lock(self, name: str, timeout: float):
        """Hold the lock ``runs/NAME.lock`` of this root: a ``filelock`` on a local root, an
        object lease (``ObjectLease``) on an object store. ``RunInProgress`` after ``timeout``."""
        path = self.root / "runs" / f"{name}.lock"
        if self.remote:
            with ObjectLease(path, timeout=timeout):
                yield path
            return
        from filelock import FileLock, Timeout

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise RunInProgress(f"another job has held {path} for over {timeout:.0f}s; try again when it ends") from None
        try:
            yield path
        finally:
            lock.release()

    def sweep_stale(self, date) -> list[Path]:
        """Remove what killed writers of ``date`` left behind: staging and trash directories and
        temporary JSON files whose writing process (on this host) no longer runs. Returns them."""
        import psutil

        day = f"dt={as_date(date).isoformat()}"
        if self.remote:
            return self._sweep_unfinished_versions(date)
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

    def _sweep_unfinished_versions(self, date) -> list[StoragePath]:
        """On an object store: versions of ``date`` without a manifest (a killed writer's). Called
        under the date's lock, which every writer of the date holds, so none of them is in progress."""
        removed = []
        for product in PRODUCTS:
            base = self.partition(product, date)
            for child in (base.iterdir() if base.is_dir() else ()):
                if child.name.startswith("v=") and not (child / MANIFEST).is_file():
                    remove_tree(child)
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
        return self.published_and_tag(product)[0]

    def published_and_tag(self, product: str = "topn") -> tuple[dict | None, str | None]:
        """The pointer and the tag of the object read (its ETag on an object store, what a
        conditional write of the next pointer must match; None locally or when there is none)."""
        path = self.pointer_path(product)
        try:
            data, tag = read_bytes_and_tag(path)
        except FileNotFoundError:
            return None, None
        return json.loads(data), tag

    def pointer_history(self, product: str = "topn") -> list[dict]:
        """Every pointer this root has had, oldest first (``action``: publish or rollback)."""
        path = self.pointer_path(product).parent / POINTER_HISTORY
        try:
            text = read_text(path)
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def rolled_back(self, product: str = "topn") -> set[str]:
        """Versions (root-relative paths) a rollback moved the pointer away from: never published again."""
        return {entry["rolled_back_from"] for entry in self.pointer_history(product) if entry.get("rolled_back_from")}

    def move_pointer(self, pointer: dict, action: str, product: str = "topn", *, tag: str | None = None) -> dict:
        """Write ``pointer`` and append it to the history. Locally: an atomic rename, callers hold
        the publish lock. On an object store: a conditional write that only succeeds while the
        pointer is still the one read with ``tag`` (none yet: ``tag`` None), else ``PointerMoved``."""
        path = self.pointer_path(product)
        text = json.dumps(pointer, indent=2, sort_keys=True, default=str) + "\n"
        if self.remote:
            put_if_match(path, text.encode(), tag)
        else:
            write_text(path, text)
        append_line(path.parent / POINTER_HISTORY, json.dumps({**pointer, "action": action}, sort_keys=True, default=str))
        return pointer

    # -- top-N versions and the gate's verdict ---------------------------------------------
    def versions(self, date, product: str = "topn") -> list[StoragePath]:
        """Complete (manifested) versions of ``date`` (top-N lists, or ``product``), oldest first."""
        base = self.partition(product, date)
        if not base.is_dir():
            return []
        return sorted((p for p in base.iterdir() if p.name.startswith("v=") and (p / MANIFEST).is_file()),
                      key=lambda p: p.name)

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
        if str(resolved.parent) != str(self.partition(product, date)) or not resolved.name.startswith("v="):
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
        relative = self.relative(version_dir)
        for attempt in range(POINTER_RETRIES):
            if relative in self.rolled_back(product):
                raise PublishRefused(f"not publishing {relative}: a rollback took it off the air; run {product} "
                                     f"again for a new version of {date}")
            current, tag = self.published_and_tag(product)
            if current and as_date(current["date"]) > date and not allow_older:
                return {**current, "kept": True, "reason": f"live date {current['date']} is newer than {date}"}
            pointer = {
                "date": date.isoformat(),
                "path": relative,
                "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **(extra or {}),
            }
            try:
                return self.move_pointer(pointer, "publish", product, tag=tag)
            except PointerMoved:  # another publisher moved it since we read it: decide again
                log.info("publish %s: the %s pointer moved while publishing (attempt %d); reading it again",
                         date, product, attempt + 1)
                time.sleep(0.05 * (attempt + 1))
        raise PublishRefused(f"not publishing {relative}: the {product} pointer kept moving under "
                             f"{POINTER_RETRIES} concurrent publishers; run publish again")


#: Names of what a writer leaves while it works: ``.staging-NAME-HOST-PID-ID``, ``.trash-...``, ``.NAME.HOST-PID-ID.tmp``.
_LEFTOVER = re.compile(r"\.(?:staging-|trash-|)(?P<name>.+)[-.](?P<host>[A-Za-z0-9]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}(?:\.tmp)?")


def _fingerprints(version: StoragePath) -> dict[str, str]:
    """``fingerprint`` of each data file of a version (part files and the index), cheap to compare."""
    return {path.name: fingerprint(path) for path in sorted(version.glob("*.parquet"), key=lambda p: p.name)}


def fingerprint(path: StoragePath) -> str:
    """What changes when a file is rewritten: ``size:mtime_ns`` locally, ``size:ETag`` on an object store."""
    if is_remote(path):
        info = path.fs.info(path.path)
        return f"{info['size']}:{info.get('ETag') or info.get('etag') or info.get('md5Hash') or info.get('generation')}"
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _sha256(path: StoragePath) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def staged(target: StoragePath) -> Iterator[StoragePath]:
    """Yield a staging directory beside ``target`` (named for this host and process, so a killed
    writer's is recognised by ``Storage.sweep_stale``); on success it is flushed to disk and
    atomically replaces ``target``; on error it is removed and ``target`` is left untouched.

    On an object store, a version (``v=...``, a unique name) is written in place: it is complete
    when its manifest exists, and a failed attempt's objects are deleted. Any other partition is
    staged in a local temporary directory and uploaded by ``upload_partition``."""
    if is_remote(target):
        if target.name.startswith("v="):
            try:
                yield target
            except BaseException:
                remove_tree(target)
                raise
            return
        with tempfile.TemporaryDirectory(prefix=f"nightly-topn-{target.name}-") as local:
            yield Path(local)
            upload_partition(Path(local), target)
        return
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


def write_text(path: StoragePath, text: str) -> None:
    """Write a file atomically and durably (temp file, fsync, rename, fsync of the directory), so
    a crash or power loss leaves the old file or the new one, never an empty or partial one.
    On an object store one PUT is already all or nothing."""
    path = as_path(path)
    if is_remote(path):
        path.write_bytes(text.encode("utf-8"))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: StoragePath, payload) -> None:
    """``write_text`` of ``payload`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: StoragePath):
    """Read a JSON file; a missing file is ``MissingPartition``, a corrupt one ``BadInput``, both naming it."""
    path = as_path(path)
    try:  # one GET on an object store: another writer may replace the object meanwhile
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise MissingPartition(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid JSON ({exc})") from None


def write_table(table: pa.Table, path: StoragePath, **kwargs) -> None:
    """Write Parquet with zstd compression (callers write inside a staged directory)."""
    kwargs.setdefault("compression", "zstd")
    pq.write_table(table, arrow_path(path), **kwargs)


def read_table(path: StoragePath, schema: pa.Schema | None = None, **kwargs) -> pa.Table:
    """Read one Parquet file, raising a message that names the file when it is unreadable."""
    try:
        return pq.read_table(arrow_path(path), schema=schema, **kwargs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"cannot read Parquet file {path}: {exc}") from exc


# -- local paths and object stores --------------------------------------------------------------
#: Conditional writes a publisher retries when other publishers keep moving the pointer.
POINTER_RETRIES = 20
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class PointerMoved(Exception):
    """A conditional write lost: the object changed since it was read (``If-Match`` failed)."""


def is_remote(path) -> bool:
    """True for an object-store path (a ``UPath`` that is not a local ``pathlib.Path``)."""
    return not isinstance(path, (PurePath, str)) and _URL.match(str(path)) is not None


def as_path(value: str | os.PathLike) -> StoragePath:
    """A path object for ``value``: a ``UPath`` for a URL (``s3://...``), else ``pathlib.Path``."""
    if isinstance(value, PurePath) or is_remote(value):
        return value
    text = str(value)
    if _URL.match(text) and not text.startswith("file://"):
        from upath import UPath

        if text.startswith(("s3://", "s3a://")):
            return UPath(text, use_listings_cache=False, **_s3_endpoint())
        return UPath(text)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _s3_endpoint() -> dict[str, str]:
    """The endpoint of the environment (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``) as an
    explicit option: fsspec caches one filesystem per set of options, so a process whose
    environment now names another endpoint must not be handed the client of the old one."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def arrow_path(path: StoragePath) -> str:
    """The string pyarrow and pandas open: a local path, or the URL (pyarrow's own S3 and GCS
    filesystems, configured by the standard ``AWS_*`` / Google credentials of the environment)."""
    return str(path)


def remove_tree(path: StoragePath) -> None:
    """Delete a directory (or prefix) and everything under it; nothing there is not an error."""
    if is_remote(path):
        try:
            path.fs.rm(path.path, recursive=True)
        except FileNotFoundError:
            pass
        return
    shutil.rmtree(path, ignore_errors=True)


def move_tree(source: StoragePath, target: StoragePath) -> None:
    """Move a directory: a rename locally (flushed), copy then delete on an object store."""
    if is_remote(source):
        source.fs.copy(source.path, target.path, recursive=True)
        remove_tree(source)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    for directory in (source.parent, target.parent):
        fsync_dir(directory)


def upload_partition(local: Path, target: StoragePath) -> None:
    """Replace the partition ``target`` on an object store with the files of ``local``: the old
    manifest is deleted first (readers see the partition as incomplete, never as a mix), the
    new files are uploaded, objects the new partition does not have are deleted, and the
    manifest is written last. Writers of a date hold its lock, so no two uploads overlap."""
    fs, base = target.fs, target.path.rstrip("/")
    try:
        fs.rm_file(f"{base}/{MANIFEST}")
    except FileNotFoundError:
        pass
    files = sorted(p for p in local.rglob("*") if p.is_file())
    new = {p.relative_to(local).as_posix() for p in files}
    data = [p for p in files if p.relative_to(local).as_posix() != MANIFEST]
    if data:  # one batch: fsspec uploads them concurrently
        fs.put([str(p) for p in data], [f"{base}/{p.relative_to(local).as_posix()}" for p in data])
    try:
        old = fs.find(base)
    except FileNotFoundError:
        old = []
    stale = [key for key in old if key[len(base) + 1:] not in new]
    if stale:
        fs.rm(stale)
    if MANIFEST in new:
        fs.put_file(str(local / MANIFEST), f"{base}/{MANIFEST}")


@contextmanager
def local_directory(path: StoragePath) -> Iterator[Path]:
    """``path`` itself when local; an object-store directory copied into a temporary one (for
    readers that need files on disk: ``np.load`` of a model, ``torch.load``)."""
    if not is_remote(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=f"nightly-topn-{path.name}-") as local:
        for key in path.fs.find(path.path):
            relative = key[len(path.path.rstrip("/")) + 1:]
            (Path(local) / relative).parent.mkdir(parents=True, exist_ok=True)
            path.fs.get_file(key, str(Path(local) / relative))
        yield Path(local)


def read_text(path: StoragePath) -> str:
    """A file's text in one read (one GET on an object store, so a concurrent replace of the
    object gives the old text or the new, never an error halfway)."""
    return read_bytes_and_tag(path)[0].decode("utf-8")


def read_bytes_and_tag(path: StoragePath) -> tuple[bytes, str | None]:
    """An object's bytes and its ETag (None locally), read in one request; FileNotFoundError if absent."""
    if not is_remote(path):
        return Path(path).read_bytes(), None
    bucket, key = _bucket_key(path)
    response = path.fs.call_s3("get_object", Bucket=bucket, Key=key)
    return _read_body(path.fs, response["Body"]), response["ETag"]


def _read_body(fs, body) -> bytes:
    from fsspec.asyn import sync

    async def read():
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read)


def delete_if_match(path: StoragePath, tag: str) -> bool:
    """Delete an object only while it is the one read with ETag ``tag``; False if it changed."""
    bucket, key = _bucket_key(path)
    try:
        path.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
    except (OSError, FileNotFoundError):
        return False
    finally:
        path.fs.invalidate_cache(path.path)
    return True


def _bucket_key(path: StoragePath) -> tuple[str, str]:
    if path.protocol not in ("s3", "s3a"):
        raise ConfigError(f"conditional writes are implemented for s3:// roots; {path} is {path.protocol}://")
    bucket, _, key = path.path.partition("/")
    return bucket, key


def put_if_match(path: StoragePath, data: bytes, tag: str | None) -> str:
    """Write an object only while it is the one read with ETag ``tag`` (``tag`` None: only while
    it does not exist); ``PointerMoved`` when another writer got there first. Returns the new ETag."""
    bucket, key = _bucket_key(path)
    condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
    try:
        response = path.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except (OSError, FileNotFoundError) as exc:
        text = str(exc)
        if "pre-condition" in text or "PreconditionFailed" in text or "412" in text \
                or "ConditionalRequestConflict" in text or isinstance(exc, FileNotFoundError):
            raise PointerMoved(f"{path} changed since it was read") from None
        raise
    finally:
        path.fs.invalidate_cache(path.path)
    return response["ETag"]


def append_line(path: StoragePath, line: str) -> None:
    """Append one line to a log. Locally: ``open("a")`` and ``fsync`` (callers serialise writers
    with a lock). On an object store, which cannot append: read, add, conditional write, retried
    until no other writer came in between, so no line is ever lost."""
    line = line.rstrip("\n") + "\n"
    if not is_remote(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())
        return
    for attempt in range(POINTER_RETRIES * 5):
        try:
            data, tag = read_bytes_and_tag(path)
        except FileNotFoundError:
            data, tag = b"", None
        try:
            put_if_match(path, data + line.encode("utf-8"), tag)
            return
        except PointerMoved:
            time.sleep(0.02 * (attempt + 1))
    raise PublishRefused(f"could not append to {path}: other writers kept changing it")


class ObjectLease:
    """A lock on an object store: the object ``path`` created only if absent (``If-None-Match:
    *``), naming its holder and when it lapses; deleted on release. A lease whose holder ran on
    this host and is gone (a killed job), or that lapsed (``timeout`` after it was taken: the
    tasks' execution timeout), is taken over."""

    def __init__(self, path: StoragePath, *, timeout: float, poll: float = 0.2):
        self.path, self.timeout, self.poll = path, timeout, poll
        self.owner = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> "ObjectLease":
        deadline = time.monotonic() + self.timeout
        while True:
            now = time.time()
            body = json.dumps({"owner": self.owner, "host": _HOST, "pid": os.getpid(),
                               "taken_at": now, "lapses_at": now + self.timeout}).encode()
            try:
                put_if_match(self.path, body, None)
                return self
            except PointerMoved:
                pass
            self._take_over_if_stale()
            if time.monotonic() > deadline:
                raise RunInProgress(f"another job has held {self.path} for over {self.timeout:.0f}s; "
                                    "try again when it ends")
            time.sleep(self.poll)

    def _take_over_if_stale(self) -> None:
        import psutil

        try:
            data, tag = read_bytes_and_tag(self.path)
        except FileNotFoundError:
            return
        try:
            held = json.loads(data)
        except ValueError:
            held = {}
        gone = held.get("host") == _HOST and not psutil.pid_exists(int(held.get("pid", 0) or 0))
        if gone or time.time() > float(held.get("lapses_at", 0)):
            # conditional: of several waiters that saw the same stale lease, one deletes it
            if delete_if_match(self.path, tag):
                log.warning("took over the lease %s of %s (%s)", self.path, held.get("owner"),
                            "its process is gone" if gone else "it lapsed")

    def __exit__(self, *exc) -> None:
        try:
            data, tag = read_bytes_and_tag(self.path)
            held = json.loads(data)
        except (FileNotFoundError, ValueError):
            return
        if held.get("owner") == self.owner:
            delete_if_match(self.path, tag)
