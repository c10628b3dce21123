"""Read one user's published top-N list straight from Parquet, or export all lists in bulk.

Part files hold disjoint, sorted user-id ranges, and row groups (a few hundred users each)
carry min/max statistics. The top-N job also writes ``_index.parquet``, a sidecar with one row
per (file, row group, first/last user id), so a reader loads one small table instead of every
footer, binary-searches it, and decodes a single row group of a single file. ``TopNReader``
keeps that directory and the open files for a warm process (a service: a few ms per lookup);
``lookup()`` is the one-shot convenience. ``export()`` streams every list out for loading a
key-value store.
"""
from __future__ import annotations

import bisect
import json
import re
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightly_topn.errors import BadInput, MissingPartition, NightlyTopNError, cause_of
from nightly_topn.experiments import CHAMPION
from nightly_topn.serving.encoding import arm_column
from nightly_topn.storage import MANIFEST, Storage, as_date, as_path, is_remote, read_json

INDEX_FILE = "_index.parquet"
#: What reading a part file or the sidecar raises when the file is gone, truncated or not Parquet.
_PART_ERRORS = (OSError, pa.ArrowException, ValueError, KeyError, IndexError)


def _pointer_naming(directory: Path) -> Path | None:
    """The published pointer ``topn/CURRENT.json`` of the storage root ``directory`` lives under
    (``<root>/topn/dt=D/v=V``) if it names ``directory``, else None."""
    directory = as_path(directory)
    directory = directory if is_remote(directory) else directory.absolute()
    if directory.parent.parent.name != "topn":
        return None
    store = Storage(directory.parent.parent.parent)
    try:
        named = (store.published() or {}).get("path")
    except (OSError, ValueError):
        return None
    return store.pointer_path() if named and str(store.inside(named)) == str(store.inside(directory)) else None


#: The key column of each published product's part files.
KEYS = {"topn": "user_id", "similar": "item_id"}


class TopNReader:
    """Point lookups in one published version: a user's list, or (``key="item_id"``) an item's
    similar items."""

    def __init__(self, directory: str | Path, *, cache_row_groups: int = 16, key: str = "user_id"):
        """Open the version ``directory``: its manifest, its ``_index.parquet`` sidecar and the
        part files they name must all be there (``MissingPartition`` naming what is not, and the
        published pointer when it names this version); a corrupt manifest or sidecar is ``BadInput``."""
        self.directory, self.key = as_path(directory), key
        if not self.directory.is_dir():
            raise self._missing(f"top-N version {self.directory} does not exist")
        manifest_path = self.directory / MANIFEST
        try:
            manifest = read_json(manifest_path)
            self.files: list[str] = [str(f) for f in manifest["files"]]
        except MissingPartition:
            raise self._missing(f"top-N version {self.directory} is incomplete: {manifest_path} is missing") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"top-N version {self.directory}: manifest {manifest_path} is unreadable "
                           f"({cause_of(exc)})") from exc
        sidecar = self.directory / str(manifest.get("index") or INDEX_FILE)
        no_sidecar = f"top-N version {self.directory} is incomplete: its index sidecar {sidecar} is missing"
        if not sidecar.is_file():
            raise self._missing(no_sidecar)
        # (min id, max id, file, row group), sorted by min id.
        columns = [f"min_{key}", f"max_{key}", "file", "row_group"]
        try:
            table = pq.read_table(str(sidecar), columns=columns)
            cols = [table.column(c).to_pylist() for c in columns]
        except FileNotFoundError:
            raise self._missing(no_sidecar) from None
        except _PART_ERRORS as exc:
            raise BadInput(f"cannot read index sidecar {sidecar}: corrupt or not a top-N index "
                           f"({cause_of(exc)})") from exc
        self.index: list[tuple[str, str, Path, int]] = sorted(
            (lo, hi, self.directory / f, rg) for lo, hi, f, rg in zip(*cols))
        parts = list(dict.fromkeys([*self.files, *cols[2]]))  # the manifest's and any the sidecar names
        missing = [name for name in parts if not (self.directory / name).is_file()]
        if missing:
            raise self._missing(f"top-N version {self.directory} is incomplete: part file "
                                f"{self.directory / missing[0]} is missing ({len(missing)} of {len(parts)} missing)")
        self._mins = [entry[0] for entry in self.index]
        self._files: dict[Path, pq.ParquetFile] = {}
        self._groups: OrderedDict = OrderedDict()  # small LRU of decoded row groups
        self._cache_size = cache_row_groups

    def _missing(self, problem: str) -> MissingPartition:
        """``MissingPartition`` for ``problem``, saying so when the published pointer names this version."""
        pointer = _pointer_naming(self.directory)
        return MissingPartition(f"{problem}; the published pointer {pointer} names it" if pointer else problem)

    @classmethod
    def published(cls, root=None, date=None, product: str = "topn") -> "TopNReader":
        """The live lists (or ``product``: ``similar``), or those of ``date`` (its newest version
        that passed its gate)."""
        store = Storage.at(root)
        if date is None:
            pointer = store.published(product)
            if pointer is None:
                raise MissingPartition(f"nothing is published under {store.root / product} "
                                       f"(no {store.pointer_path(product).name})")
            return cls(store.root / pointer["path"], key=KEYS[product])
        return cls(store.newest_gated_version(as_date(date), product), key=KEYS[product])

    def _row_group(self, path: Path, rg: int):
        key = (path, rg)
        group = self._groups.get(key)
        if group is not None:
            self._groups.move_to_end(key)
            return group
        try:
            handle = self._files.get(path)
            if handle is None:
                handle = self._files[path] = pq.ParquetFile(str(path), memory_map=not is_remote(path))
            # One thread: decoding ~100 rows is faster than handing it to a pool, and a lookup service
            # should not wait on pool threads that a busy machine may not schedule (tail latency).
            group = handle.read_row_group(rg, use_threads=False)
            group.column(self.key)
        except _PART_ERRORS as exc:
            raise self._part_error(path, exc) from exc
        self._groups[key] = group
        if len(self._groups) > self._cache_size:
            self._groups.popitem(last=False)
        return group

    def _part_error(self, path: Path, exc: Exception) -> NightlyTopNError:
        """The one-line error for a part file that vanished (``MissingPartition``) or that cannot
        be decoded (``BadInput``), both naming the file."""
        if isinstance(exc, FileNotFoundError):
            return self._missing(f"part file {path} of top-N version {self.directory} is missing")
        return BadInput(f"cannot read part file {path}: corrupt or not a top-N Parquet file ({cause_of(exc)})")

    def get(self, user_id: str) -> dict | None:
        """The user's row (item_ids, scores, source, model_version, logical_date), or None; with
        ``key="item_id"``, the item's row of similar items."""
        pos = bisect.bisect_right(self._mins, user_id) - 1
        if pos < 0 or user_id > self.index[pos][1]:
            return None
        _, _, path, rg = self.index[pos]
        group = self._row_group(path, rg)
        at = pc.index(group.column(self.key), user_id).as_py()  # C-speed scan of one row group (~128 ids)
        if at < 0:
            return None
        row = group.slice(at, 1).to_pylist()[0]
        row["logical_date"] = row["logical_date"].isoformat()
        if self.key == "user_id":
            row.setdefault("arm", CHAMPION)  # a version written before the A/B arm column: the champion's
        return row

    def export(self, out, *, fmt: str = "jsonl", batch_rows: int = 8192) -> int:
        """Write every user's list to ``out`` (a path or text stream) for bulk-loading a KV store.

        ``jsonl``: ``{"key": user_id, "value": {...row...}}`` per line; ``tsv``: ``key<TAB>json``.
        Users come out in id order (files and rows are sorted). Scores are written as the
        shortest decimal that reads back as the same float32. Returns the number of users.

        The TSV key is the raw user id unless the id contains a double quote, a backslash, a
        control character (U+0000-U+001F, U+007F-U+009F) or U+2028/U+2029; such an id is written
        as a JSON string (ASCII-only, so a line never holds a raw tab or line break but the
        separators). A raw key therefore never starts with ``"`` and an encoded one always does;
        a reader splits each line on its first tab and decodes the key::

            key, value = line.rstrip("\\n").split("\\t", 1)
            user_id = json.loads(key) if key.startswith('"') else key
            row = json.loads(value)
        """
        if fmt not in ("jsonl", "tsv"):
            raise ValueError(f"unknown export format {fmt!r} (jsonl or tsv)")
        stream = open(out, "w", encoding="utf-8") if isinstance(out, (str, Path)) else out
        written = 0
        try:
            for name in sorted(self.files):
                for batch in self._batches(self.directory / name, batch_rows):
                    stream.write(export_lines(batch, fmt))
                    written += batch.num_rows
        finally:
            if stream is not out:
                stream.close()
        return written

    def _batches(self, path: Path, batch_rows: int):
        """The record batches of one part file; a vanished or undecodable file is one-line error."""
        try:
            yield from pq.ParquetFile(str(path)).iter_batches(batch_size=batch_rows)
        except _PART_ERRORS as exc:
            raise self._part_error(path, exc) from exc


#: Characters a JSON string must escape, plus C1 controls and U+2028/U+2029 (line breaks to some
#: readers): a batch without them anywhere is written by Arrow as it is; a TSV key with one is
#: written as a JSON string (see ``TopNReader.export``).
_NEEDS_ESCAPE = r'["\\\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]'
_NEEDS_ESCAPE_PY = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


def export_lines(batch, fmt: str = "jsonl") -> str:
    """The export lines of a top-N record batch, built column by column by Arrow (no Python per
    row); batches with ids that need JSON escaping or non-finite scores go through ``json``."""
    join = pc.binary_join_element_wise
    arm = arm_column(batch)
    strings = [batch.column(c) for c in ("user_id", "source", "model_version")] + [arm]
    strings.append(pc.list_flatten(batch.column("item_ids")))
    scores = pc.list_flatten(batch.column("scores"))
    plain = not any(pc.any(pc.match_substring_regex(col, _NEEDS_ESCAPE)).as_py() for col in strings) \
        and pc.all(pc.is_finite(scores)).as_py() is not False
    if not plain:
        return json_lines(batch.to_pylist(), fmt)
    items = batch.column("item_ids")
    empty = pc.equal(pc.list_value_length(items), 0)
    item_list = pc.if_else(empty, "[]", join('["', pc.binary_join(items, '","'), '"]', ""))
    score_list = join("[", pc.binary_join(pc.cast(batch.column("scores"), pa.list_(pa.string())), ","), "]", "")
    value = join('{"item_ids":', item_list, ',"scores":', score_list, ',"source":"', batch.column("source"),
                 '","model_version":"', batch.column("model_version"), '","logical_date":"',
                 pc.cast(batch.column("logical_date"), pa.string()), '","arm":"', arm, '"}', "")
    user = batch.column("user_id")
    lines = join('{"key":"', user, '","value":', value, "}\n", "") if fmt == "jsonl" else join(user, "\t", value, "\n", "")
    return pc.binary_join(pa.ListArray.from_arrays([0, len(lines)], lines), "")[0].as_py() if len(lines) else ""


def json_lines(rows: list[dict], fmt: str) -> str:
    """The export lines of ``rows`` through the ``json`` module: what ``export_lines`` writes for
    batches that need escaping, and the reference its Arrow path is tested against."""
    import numpy as np

    out = []
    for row in rows:
        row["logical_date"] = row["logical_date"].isoformat()
        row.setdefault("arm", CHAMPION)
        row["scores"] = [float(str(np.float32(s))) for s in row["scores"]]  # shortest digits, as the Arrow path
        key = row.pop("user_id")
        value = json.dumps(row, separators=(",", ":"))
        if fmt == "jsonl":
            out.append(f'{{"key":{json.dumps(key)},"value":{value}}}')
        else:  # the TSV key rule of ``TopNReader.export``: raw, or a JSON string when it needs escaping
            out.append(f"{json.dumps(key) if _NEEDS_ESCAPE_PY.search(key) else key}\t{value}")
    return "".join(line + "\n" for line in out)


def lookup(user_id: str, *, root=None, date=None) -> dict | None:
    return TopNReader.published(root, date).get(user_id)


def lookup_similar(item_id: str, *, root=None, date=None) -> dict | None:
    """The live similar items of ``item_id`` (or those of ``date``), None for an unknown item."""
    return TopNReader.published(root, date, product="similar").get(item_id)


def export(out, *, root=None, date=None, fmt: str = "jsonl") -> int:
    """Bulk export of the live lists (or ``date``'s) to ``out``; returns the number of users."""
    return TopNReader.published(root, date).export(out, fmt=fmt)
