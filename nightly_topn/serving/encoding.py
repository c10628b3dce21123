"""One response body per user: the JSON the HTTP service returns, built once per version.

The Redis load builds the bodies of a whole record batch column by column with Arrow (no Python
per user or item), and the Parquet backend builds one from a ``TopNReader`` row with ``json``;
both give the same JSON value (a test checks it on every user of a version)::

    {"user_id": ..., "version": "topn/dt=D/v=V", "date": "D", "model_version": ...,
     "source": "model" | "fallback", "arm": "champion" | "challenger", "items": [...], "scores": [...]}

Scores are written as the shortest decimal that reads back as the same float32 (as ``export``).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightly_topn.errors import BadInput, cause_of
from nightly_topn.experiments import CHAMPION

_STRINGS = ("user_id", "source", "model_version")


def body_of(row: dict, version: str) -> bytes:
    """The body of one ``TopNReader.get`` row (``logical_date`` as ``YYYY-MM-DD``); the same bytes
    as ``bodies`` gives for that row when no string needs escaping, the same JSON value always."""
    scores = pa.array(row["scores"], pa.float32())
    if pc.all(pc.is_finite(scores)).as_py() is False:
        raise BadInput(f"user {row['user_id']!r} of {version} has a non-finite score")
    head = json.dumps({"user_id": row["user_id"], "version": version, "date": str(row["logical_date"]),
                       "model_version": row["model_version"], "source": row["source"],
                       "arm": row.get("arm") or CHAMPION, "items": row["item_ids"]},
                      ensure_ascii=False, separators=(",", ":"))
    return f'{head[:-1]},"scores":[{",".join(pc.cast(scores, pa.string()).to_pylist())}]}}'.encode()


def bodies(batch: pa.RecordBatch | pa.Table, version: str) -> pa.Array:
    """The bodies (UTF-8) of every row of a top-N batch, as one Arrow string array."""
    items, scores = batch.column("item_ids"), batch.column("scores")
    if pc.all(pc.is_finite(pc.list_flatten(scores))).as_py() is False:
        raise BadInput(f"{version} has non-finite scores; the top-N gate should have refused it")
    arm = arm_column(batch)
    strings = [batch.column(c) for c in _STRINGS] + [arm, pc.list_flatten(items)]
    if any(map(_needs_escape, strings)) or _needs_escape(pa.array([version])):
        return pc.cast(pa.array([body_of(row, version) for row in batch.to_pylist()], pa.binary()), pa.string())
    join = pc.binary_join_element_wise
    empty = pc.equal(pc.list_value_length(items), 0)
    item_list = pc.if_else(empty, "[]", join('["', pc.binary_join(items, '","'), '"]', ""))
    score_list = join("[", pc.binary_join(pc.cast(scores, pa.list_(pa.string())), ","), "]", "")
    return join('{"user_id":"', batch.column("user_id"), f'","version":"{version}","date":"',
                pc.cast(batch.column("logical_date"), pa.string()), '","model_version":"',
                batch.column("model_version"), '","source":"', batch.column("source"), '","arm":"', arm,
                '","items":', item_list,
                ',"scores":', score_list, "}", "")


def arm_column(batch: pa.RecordBatch | pa.Table):
    """The batch's A/B ``arm`` column; a version written before it existed is all the champion's."""
    if "arm" in batch.schema.names:
        return batch.column("arm")
    return pa.repeat(pa.scalar(CHAMPION, pa.string()), batch.num_rows)


def _needs_escape(strings) -> bool:
    """Whether any byte of ``strings`` is one a JSON string must escape (RFC 8259: ``"``, ``\\``,
    U+0000-U+001F), scanned on the data buffers (a slice's whole buffer: at worst a slow path)."""
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    for chunk in chunks:
        data = chunk.buffers()[2]
        if data is not None and _ESCAPED[np.frombuffer(data, dtype=np.uint8)].any():
            return True
    return False


_ESCAPED = np.zeros(256, dtype=bool)
_ESCAPED[:0x20] = _ESCAPED[0x22] = _ESCAPED[0x5C] = True


def truncated(body: bytes, n: int | None) -> bytes:
    """``body`` with only its first ``n`` items and scores (the ``?n=`` of a request)."""
    if n is None:
        return body
    value = json.loads(body)
    if n >= len(value["items"]):
        return body
    value["items"], value["scores"] = value["items"][:n], value["scores"][:n]
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def chunks(directory, files: list[str], version: str, batch_rows: int):
    """``(path, [row groups])`` of about ``batch_rows`` users each, part file by part file."""
    for name in files:
        path = directory / name
        try:
            meta = pq.read_metadata(str(path))
        except (OSError, pa.ArrowException) as exc:
            raise BadInput(f"cannot read part file {path} of {version}: {cause_of(exc)}") from exc
        group, rows = [], 0
        for rg in range(meta.num_row_groups):
            group.append(rg)
            rows += meta.row_group(rg).num_rows
            if rows >= batch_rows:
                yield path, group
                group, rows = [], 0
        if group:
            yield path, group


def read_chunk(chunk, version: str) -> pa.RecordBatch:
    """The rows of one ``chunks`` entry as one record batch (a broken file: ``BadInput`` naming it)."""
    path, groups = chunk
    try:
        table = pq.ParquetFile(str(path), memory_map="://" not in str(path)).read_row_groups(groups, use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"cannot read part file {path} of {version}: {cause_of(exc)}") from exc
    return pa.record_batch([column.combine_chunks() for column in table.columns], schema=table.schema)


def version_bodies(directory, files: list[str], version: str, batch_rows: int = 4096) -> dict[str, bytes]:
    """Every user's body of a version, in memory (the Parquet backend's preload): the chunks
    read and encoded on two threads (Arrow and Parquet release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def encode(chunk):
        batch = read_chunk(chunk, version)
        return batch.column("user_id").to_pylist(), pc.cast(bodies(batch, version), pa.binary()).to_pylist()

    out: dict[str, bytes] = {}
    with ThreadPoolExecutor(2, thread_name_prefix="preload") as pool:
        for users, values in pool.map(encode, chunks(directory, files, version, batch_rows)):
            out.update(zip(users, values))
    return out
