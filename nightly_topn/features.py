"""The one reader of a features partition (``interactions.parquet``, the two id maps, ``new_items.parquet``,
``item_categories.parquet``).

Everything that reads prepared training data goes through ``InteractionsFile``: the train and
evaluate jobs load the whole partition (``Features.load``), the top-N pipeline reads it range
by range (``History``). The directory is a local path or any URI ``pyarrow.fs`` knows
(``s3://``, ``gs://``, ``hdfs://``), so Beam workers elsewhere read it the same way.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from nightly_topn.storage import as_path

INTERACTIONS = "interactions.parquet"
USER_MAP = "user_map.parquet"
ITEM_MAP = "item_map.parquet"
NEW_ITEMS = "new_items.parquet"
ITEM_CATEGORIES = "item_categories.parquet"
_ID_COLUMN = {USER_MAP: "user_id", ITEM_MAP: "item_id"}


class InteractionsFile:
    """An open ``interactions.parquet`` of a features partition, plus the partition's shape
    (``users × items`` from the id maps' row counts, read from their footers only)."""

    def __init__(self, directory: str | os.PathLike):
        import pyarrow.fs as pafs

        directory = str(directory)
        if "://" in directory:
            self._fs, self._base = pafs.FileSystem.from_uri(directory)
        else:
            self._fs, self._base = pafs.LocalFileSystem(), os.path.abspath(directory)
        self.directory = directory
        self.shape = (self._rows(USER_MAP), self._rows(ITEM_MAP))
        self._handle = self._fs.open_input_file(self._path(INTERACTIONS))
        self.file = pq.ParquetFile(self._handle)

    def _path(self, name: str) -> str:
        return f"{self._base.rstrip('/')}/{name}"

    def _rows(self, name: str) -> int:
        with self._fs.open_input_file(self._path(name)) as handle:
            return pq.read_metadata(handle).num_rows

    def read(self, columns: list[str], groups: list[int] | None = None) -> pa.Table:
        """``columns`` of the given row groups (all when None), on the calling thread."""
        if groups is None:
            groups = list(range(self.file.metadata.num_row_groups))
        return self.file.read_row_groups(groups, columns=columns, use_threads=False)

    def ids(self, name: str) -> pa.Array:
        """The ids of an id map (``USER_MAP`` or ``ITEM_MAP``), in index order."""
        with self._fs.open_input_file(self._path(name)) as handle:
            return pq.read_table(handle, columns=[_ID_COLUMN[name]]).column(0).combine_chunks()

    def optional(self, name: str) -> pa.Table | None:
        """The partition's optional table ``name`` (``NEW_ITEMS``, ``ITEM_CATEGORIES``,
        ``rules.parquet``), None when it was not written or is empty."""
        import pyarrow.fs as pafs

        path = self._path(name)
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_file(path) as handle:
            table = pq.read_table(handle)
        return table if table.num_rows else None

    def new_items(self) -> "NewItems | None":
        """The partition's new (cold) items with their neighbour weights, None when there are none
        (no ``new_items.parquet``: knob off, no item attributes; or an empty one)."""
        table = self.optional(NEW_ITEMS)
        return None if table is None else NewItems.of(table, *self.shape)

    def item_categories(self) -> sp.csr_matrix | None:
        """``items × categories`` (binary, warm then new items, vocabulary sorted) from
        ``item_categories.parquet``; None when the partition has none (no item attributes)."""
        table = self.optional(ITEM_CATEGORIES)
        if table is None:
            return None
        names = table.column("category").to_numpy(zero_copy_only=False)
        vocabulary, column = np.unique(names, return_inverse=True)
        rows = table.column("item_index").to_numpy()
        n_items = self.shape[1] + (len(self.new_items() or ()) if rows.max() >= self.shape[1] else 0)
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, column.reshape(-1))),
                             shape=(n_items, len(vocabulary)))

    def close(self) -> None:
        self._handle.close()


def read_new_items(directory: str | os.PathLike) -> "NewItems | None":
    """``InteractionsFile(directory).new_items()``, the file closed again."""
    return _read(directory, InteractionsFile.new_items)


def read_item_categories(directory: str | os.PathLike) -> sp.csr_matrix | None:
    """``InteractionsFile(directory).item_categories()``, the file closed again."""
    return _read(directory, InteractionsFile.item_categories)


def read_optional(directory: str | os.PathLike, name: str) -> pa.Table | None:
    """``InteractionsFile(directory).optional(name)``, the file closed again."""
    return _read(directory, lambda source: source.optional(name))


def _read(directory, what):
    source = InteractionsFile(directory)
    try:
        return what(source)
    finally:
        source.close()


@dataclass
class NewItems:
    """New items of a partition: new item ``j`` is item index ``n_warm + j`` wherever lists are scored."""

    ids: pa.Array  # item ids, row j = cold item j
    weights: sp.csr_matrix  # W: n_warm × n_cold, columns sum to 1 (``cold_start.weight_matrix``)
    seen: sp.csr_matrix  # n_users × n_cold: who interacted with it already (never shown it)

    @classmethod
    def of(cls, table: pa.Table, n_users: int, n_warm: int) -> "NewItems":
        from nightly_topn import cold_start

        neighbors, weights, seen = (table.column(c).combine_chunks() for c in ("neighbors", "weights", "seen_users"))
        offsets = seen.offsets.to_numpy()
        by_item = sp.csr_matrix((np.ones(len(seen.flatten()), np.float32), seen.flatten().to_numpy(), offsets - offsets[0]),
                                shape=(table.num_rows, n_users))
        return cls(table.column("item_id").combine_chunks(), cold_start.weight_matrix(neighbors, weights, n_warm),
                   sp.csr_matrix(by_item.T))

    def __len__(self) -> int:
        return len(self.ids)

    def history(self, rows: sp.csr_matrix, users: np.ndarray) -> sp.csr_matrix:
        """``rows`` (history of ``users`` over the warm items) widened by the new items' columns, so
        the scorer masks a new item a user has already interacted with like any seen item."""
        return sp.hstack([rows, self.seen[np.asarray(users)]], format="csr")


@dataclass
class Features:
    """A whole features partition in memory: per prepared (user, item) pair, in file order."""

    directory: Path
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray  # per pair: dense user index
    items: np.ndarray
    confidence: np.ndarray
    split: np.ndarray  # preprocess's temporal labels: "train" / "holdout" / "late"
    first_time: np.ndarray  # µs since the epoch
    last_time: np.ndarray
    new_items: NewItems | None = None

    COLUMNS = ["user_index", "item_index", "confidence", "split", "first_time", "last_time"]

    @classmethod
    def load(cls, directory: str | Path) -> "Features":
        source = InteractionsFile(directory)
        try:
            table = source.read(cls.COLUMNS)
            user_ids, item_ids = (source.ids(m).to_numpy(zero_copy_only=False) for m in (USER_MAP, ITEM_MAP))
            new_items = source.new_items()
        finally:
            source.close()
        return cls(
            directory=as_path(directory),
            user_ids=user_ids,
            item_ids=item_ids,
            users=table.column("user_index").to_numpy(),
            items=table.column("item_index").to_numpy(),
            confidence=table.column("confidence").to_numpy(),
            split=pc.cast(table.column("split"), "string").to_numpy(zero_copy_only=False),
            first_time=pc.cast(table.column("first_time"), "int64").to_numpy(),
            last_time=pc.cast(table.column("last_time"), "int64").to_numpy(),
            new_items=new_items,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)

    def matrix(self, *splits: str) -> sp.csr_matrix:
        """``users × items`` confidences of the rows in ``splits`` (all rows when none given)."""
        keep = np.isin(self.split, splits) if splits else np.ones(len(self.split), dtype=bool)
        return sp.csr_matrix(
            (self.confidence[keep].astype(np.float32), (self.users[keep], self.items[keep])), shape=self.shape
        )

    def fingerprint(self) -> str:
        """Content hash of the prepared data (identifies what a model was trained on)."""
        digest = hashlib.sha256()
        for name in (INTERACTIONS, USER_MAP, ITEM_MAP):
            digest.update((self.directory / name).read_bytes())
        return digest.hexdigest()[:16]


class History:
    """The ``users × items`` confidence rows of a features partition, read range by range.

    preprocess writes ``interactions.parquet`` sorted by user in row groups of ~128K rows, so
    each row group's ``user_index`` min/max statistics name the users it holds. ``history[a:b]``
    reads only the row groups overlapping users ``a..b-1`` (three columns, no per-row Python)
    and returns those rows as CSR, so a worker holds one range of history at a time, whatever
    the total number of interactions. A file that is not sorted that way (no statistics,
    overlapping ranges, unsorted rows) is read whole once and sliced.
    """

    COLUMNS = ["user_index", "item_index", "confidence"]

    def __init__(self, features_dir: str | os.PathLike):
        self._source = InteractionsFile(features_dir)
        self.shape = self._source.shape
        self._whole = None
        meta = self._source.file.metadata
        column = meta.schema.to_arrow_schema().get_field_index("user_index")
        stats = [meta.row_group(g).column(column).statistics for g in range(meta.num_row_groups)]
        if all(st is not None and st.has_min_max for st in stats):
            self._lo = np.array([st.min for st in stats], dtype=np.int64)
            self._hi = np.array([st.max for st in stats], dtype=np.int64)
            if np.any(self._lo > self._hi) or np.any(self._hi[:-1] > self._lo[1:]):
                self._load_whole()
        else:
            self._load_whole()

    def __getitem__(self, key: slice) -> sp.csr_matrix:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise IndexError("History supports contiguous user ranges only")
        if self._whole is not None:
            return self._whole[start:stop]
        groups = np.flatnonzero((self._hi >= start) & (self._lo < stop)).tolist()
        users, items, conf = self._read(groups)
        if len(users) and np.any(users[1:] < users[:-1]):  # statistics looked sorted, the rows are not
            self._load_whole()
            return self._whole[start:stop]
        lo, hi = np.searchsorted(users, [start, stop])
        return self._csr(users[lo:hi] - start, items[lo:hi], conf[lo:hi], stop - start)

    def _read(self, groups: list[int]):
        if not groups:
            return (np.empty(0, np.int32),) * 2 + (np.empty(0, np.float32),)
        table = self._source.read(self.COLUMNS, groups)
        return tuple(table.column(name).to_numpy() for name in self.COLUMNS)

    def _csr(self, rows, items, conf, n_rows: int, ordered: bool = True) -> sp.csr_matrix:
        shape = (n_rows, self.shape[1])
        if not ordered:
            matrix = sp.csr_matrix((conf, (rows, items)), shape=shape)
        else:
            index = np.int32 if len(rows) < 2**31 else np.int64
            indptr = np.zeros(n_rows + 1, dtype=index)
            np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
            matrix = sp.csr_matrix((conf, items.astype(index, copy=False), indptr), shape=shape)
        matrix.sort_indices()
        return matrix

    def _load_whole(self) -> None:
        users, items, conf = self._read(list(range(self._source.file.metadata.num_row_groups)))
        self._whole = self._csr(users, items, conf, self.shape[0], ordered=False)

    def close(self) -> None:
        self._source.close()
