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
from collections import OrderedDict
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightly_topn.storage import MANIFEST, Storage, as_date, read_json

INDEX_FILE = "_index.parquet"


class TopNReader:
    def __init__(self, directory: str | Path, *, cache_row_groups: int = 16):
        self.directory = Path(directory)
        manifest = read_json(self.directory / MANIFEST)
        self.files: list[str] = list(manifest["files"])
        # (min id, max id, file, row group), sorted by min id.
        self.index: list[tuple[str, str, Path, int]] = []
        sidecar = manifest.get("index")
        if sidecar and (self.directory / sidecar).is_file():
            table = pq.read_table(self.directory / sidecar, columns=["min_user_id", "max_user_id", "file", "row_group"])
            cols = [table.column(c).to_pylist() for c in ("min_user_id", "max_user_id", "file", "row_group")]
            self.index = [(lo, hi, self.directory / f, rg) for lo, hi, f, rg in zip(*cols)]
        else:  # versions written before the sidecar existed: read every footer's statistics
            for name in self.files:
                meta = pq.read_metadata(self.directory / name)
                for rg in range(meta.num_row_groups):
                    stats = meta.row_group(rg).column(0).statistics
                    self.index.append((stats.min, stats.max, self.directory / name, rg))
        self.index.sort()
        self._mins = [entry[0] for entry in self.index]
        self._files: dict[Path, pq.ParquetFile] = {}
        self._groups: OrderedDict = OrderedDict()  # small LRU of decoded row groups
        self._cache_size = cache_row_groups

    @classmethod
    def published(cls, root=None, date=None) -> "TopNReader":
        """The live lists, or those of ``date`` (its newest version that passed the top-N gate)."""
        from nightly_topn.errors import MissingPartition

        store = Storage.at(root)
        if date is None:
            pointer = store.published()
            if pointer is None:
                raise MissingPartition(f"nothing is published under {store.root} (no {store.pointer_path().name})")
            return cls(store.root / pointer["path"])
        return cls(store.newest_gated_version(as_date(date)))

    def _row_group(self, path: Path, rg: int):
        key = (path, rg)
        group = self._groups.get(key)
        if group is not None:
            self._groups.move_to_end(key)
            return group
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = pq.ParquetFile(path, memory_map=True)
        # One thread: decoding ~100 rows is faster than handing it to a pool, and a lookup service
        # should not wait on pool threads that a busy machine may not schedule (tail latency).
        group = handle.read_row_group(rg, use_threads=False)
        self._groups[key] = group
        if len(self._groups) > self._cache_size:
            self._groups.popitem(last=False)
        return group

    def get(self, user_id: str) -> dict | None:
        """The user's row (item_ids, scores, source, model_version, logical_date), or None."""
        pos = bisect.bisect_right(self._mins, user_id) - 1
        if pos < 0 or user_id > self.index[pos][1]:
            return None
        _, _, path, rg = self.index[pos]
        group = self._row_group(path, rg)
        at = pc.index(group.column("user_id"), user_id).as_py()  # C-speed scan of one row group (~128 ids)
        if at < 0:
            return None
        row = group.slice(at, 1).to_pylist()[0]
        row["logical_date"] = row["logical_date"].isoformat()
        return row

    def export(self, out, *, fmt: str = "jsonl", batch_rows: int = 8192) -> int:
        """Write every user's list to ``out`` (a path or text stream) for bulk-loading a KV store.

        ``jsonl``: ``{"key": user_id, "value": {...row...}}`` per line; ``tsv``: ``user_id<TAB>json``.
        Users come out in id order (files and rows are sorted). Scores are written as the
        shortest decimal that reads back as the same float32. Returns the number of users.
        """
        if fmt not in ("jsonl", "tsv"):
            raise ValueError(f"unknown export format {fmt!r} (jsonl or tsv)")
        stream = open(out, "w", encoding="utf-8") if isinstance(out, (str, Path)) else out
        written = 0
        try:
            for name in sorted(self.files):
                for batch in pq.ParquetFile(self.directory / name).iter_batches(batch_size=batch_rows):
                    stream.write(export_lines(batch, fmt))
                    written += batch.num_rows
        finally:
            if stream is not out:
                stream.close()
        return written


#: Characters that a JSON string must escape; ids without them are written by Arrow as they are.
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def export_lines(batch, fmt: str = "jsonl") -> str:
    """The export lines of a top-N record batch, built column by column by Arrow (no Python per
    row); batches with ids that need JSON escaping or non-finite scores go through ``json``."""
    import pyarrow as pa

    join = pc.binary_join_element_wise
    strings = [batch.column(c) for c in ("user_id", "source", "model_version")]
    strings.append(pc.list_flatten(batch.column("item_ids")))
    scores = pc.list_flatten(batch.column("scores"))
    plain = not any(pc.any(pc.match_substring_regex(col, _NEEDS_ESCAPE)).as_py() for col in strings) \
        and pc.all(pc.is_finite(scores)).as_py() is not False
    if not plain:
        return _json_lines(batch.to_pylist(), fmt)
    items = batch.column("item_ids")
    empty = pc.equal(pc.list_value_length(items), 0)
    item_list = pc.if_else(empty, "[]", join('["', pc.binary_join(items, '","'), '"]', ""))
    score_list = join("[", pc.binary_join(pc.cast(batch.column("scores"), pa.list_(pa.string())), ","), "]", "")
    value = join('{"item_ids":', item_list, ',"scores":', score_list, ',"source":"', batch.column("source"),
                 '","model_version":"', batch.column("model_version"), '","logical_date":"',
                 pc.cast(batch.column("logical_date"), pa.string()), '"}', "")
    user = batch.column("user_id")
    lines = join('{"key":"', user, '","value":', value, "}\n", "") if fmt == "jsonl" else join(user, "\t", value, "\n", "")
    return pc.binary_join(pa.ListArray.from_arrays([0, len(lines)], lines), "")[0].as_py() if len(lines) else ""


def _json_lines(rows: list[dict], fmt: str) -> str:
    import numpy as np

    out = []
    for row in rows:
        row["logical_date"] = row["logical_date"].isoformat()
        row["scores"] = [float(str(np.float32(s))) for s in row["scores"]]  # shortest digits, as the Arrow path
        key = row.pop("user_id")
        value = json.dumps(row, separators=(",", ":"))
        out.append(f'{{"key":{json.dumps(key)},"value":{value}}}' if fmt == "jsonl" else f"{key}\t{value}")
    return "".join(line + "\n" for line in out)


def lookup(user_id: str, *, root=None, date=None) -> dict | None:
    return TopNReader.published(root, date).get(user_id)


def export(out, *, root=None, date=None, fmt: str = "jsonl") -> int:
    """Bulk export of the live lists (or ``date``'s) to ``out``; returns the number of users."""
    return TopNReader.published(root, date).export(out, fmt=fmt)
