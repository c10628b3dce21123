"""Read one user's published top-N list straight from Parquet.

Part files hold disjoint, sorted user-id ranges, and row groups carry min/max statistics, so a
lookup reads one row group of one file. ``TopNReader`` caches the file metadata for a warm
process (a service); ``lookup()`` is the one-shot convenience.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightly_topn.storage import MANIFEST, Storage, as_date, read_json


class TopNReader:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest = read_json(self.directory / MANIFEST)
        self.index: list[tuple[str, str, Path, int]] = []  # (min id, max id, file, row group)
        for name in manifest["files"]:
            meta = pq.read_metadata(self.directory / name)
            for rg in range(meta.num_row_groups):
                stats = meta.row_group(rg).column(0).statistics
                self.index.append((stats.min, stats.max, self.directory / name, rg))
        self.index.sort()
        self._mins = [entry[0] for entry in self.index]
        self._files: dict[Path, pq.ParquetFile] = {}

    @classmethod
    def published(cls, root=None, date=None) -> "TopNReader":
        """The live lists, or those of ``date`` (its newest complete version)."""
        store = Storage.at(root)
        if date is None:
            pointer = store.published()
            if pointer is None:
                raise FileNotFoundError(f"nothing is published under {store.root}")
            return cls(store.root / pointer["path"])
        from nightly_topn.jobs.publish import latest_version

        return cls(latest_version(store, as_date(date)))

    def get(self, user_id: str) -> dict | None:
        """The user's row (item_ids, scores, source, model_version, logical_date), or None."""
        pos = bisect.bisect_right(self._mins, user_id) - 1
        if pos < 0 or user_id > self.index[pos][1]:
            return None
        _, _, path, rg = self.index[pos]
        handle = self._files.get(path) or self._files.setdefault(path, pq.ParquetFile(path))
        group = handle.read_row_group(rg)
        rows = group.filter(pc.equal(group.column("user_id"), user_id))
        if not rows.num_rows:
            return None
        row = rows.to_pylist()[0]
        row["logical_date"] = row["logical_date"].isoformat()
        return row


def lookup(user_id: str, *, root=None, date=None) -> dict | None:
    return TopNReader.published(root, date).get(user_id)
