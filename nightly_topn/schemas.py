"""The data contract: every table the system reads or writes, defined once as a pyarrow schema.

Loaders cast to these schemas at the boundary, so everything downstream can rely on
column names, types and nullability without re-checking them.
"""
from __future__ import annotations

import re

import pyarrow as pa

from nightly_topn.errors import BadInput

MAX_ID_LENGTH = 256
"""The longest ``user_id`` / ``item_id`` (in characters) the contract accepts.

Ids are keys, not payloads. Parquet writers drop a row group's min/max statistics for long
values, and the lookup index relies on those statistics to find a user's row group: one
10,000-character id made the index impossible to build. The raw gate therefore quarantines
rows whose id is longer (``expectations/define_suites.py``)."""

#: One user-item interaction. ``weight`` is the event's strength: 1 for a click or view,
#: the star value for a rating, the quantity for a purchase.
EVENTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"contract": "interaction-event", "version": "1"},
)

#: Event types the system understands, with the default confidence each one carries.
EVENT_TYPE_CONFIDENCE = {"view": 1.0, "click": 1.0, "play": 2.0, "rating": 1.0, "purchase": 4.0}

#: Optional user attributes (any column but ``user_id`` may be null).
USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int16()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("signup_time", pa.timestamp("us", tz="UTC")),
        pa.field("segment", pa.string()),  # e.g. a region: whose allow-list (``RULES``) applies
    ],
    metadata={"contract": "user-attributes", "version": "2"},
)

#: Optional item attributes; ``categories`` drives diversity metrics and cold-start models. An item
#: is listed only inside its availability window ``[available_from, available_until)`` (either end
#: may be null: open), judged at the end of the run date, when its lists go on the air.
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("release_time", pa.timestamp("us", tz="UTC")),
        pa.field("available_from", pa.timestamp("us", tz="UTC")),
        pa.field("available_until", pa.timestamp("us", tz="UTC")),
    ],
    metadata={"contract": "item-attributes", "version": "2"},
)

#: Candidate rules (optional ``rules.*`` beside the attribute files), applied while scoring:
#:
#: * ``exclude`` ``item_id``: no user is shown the item (withdrawn, out of stock);
#: * ``block`` ``user_id`` + ``item_id``: that user is not shown the item;
#: * ``allow`` ``segment`` + ``item_id``: users of the segment (``USERS.segment``) are shown only
#:   items of their segment's allow-list (a segment without ``allow`` rows is not restricted).
#:
#: Rules naming ids outside the catalogue are kept (counted) and do nothing.
RULE_KINDS = ("exclude", "block", "allow")
RULES = pa.schema(
    [
        pa.field("rule", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("reason", pa.string()),
    ],
    metadata={"contract": "candidate-rules", "version": "1"},
)

#: Prepared training data: one row per (user, item) pair inside the training window.
INTERACTIONS = pa.schema(
    [
        pa.field("user_index", pa.int32(), nullable=False),
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("n_events", pa.int32(), nullable=False),
        pa.field("first_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("last_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # "train" or "holdout"
    ],
    metadata={"contract": "interactions", "version": "1"},
)

#: Dense id mappings; index order is the sorted order of the external ids.
USER_MAP = pa.schema(
    [pa.field("user_index", pa.int32(), nullable=False), pa.field("user_id", pa.string(), nullable=False)]
)
ITEM_MAP = pa.schema(
    [pa.field("item_index", pa.int32(), nullable=False), pa.field("item_id", pa.string(), nullable=False)]
)

#: New items of a features partition (``new_items.parquet``): items of the landed items table that
#: are not in the warm catalogue (``item_map``) and arrived within ``new_item_days``, each with its
#: warm neighbours in attribute space. Row ``j`` is scored as item index ``len(item_map) + j``
#: (``nightly_topn.cold_start``); ``seen_users`` (dense user indices) interacted with it already in
#: the window (too few to make it warm) and must not be shown it.
NEW_ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("first_seen", pa.timestamp("us", tz="UTC"), nullable=False),  # release time, else first event
        pa.field("neighbors", pa.list_(pa.int32()), nullable=False),  # warm item indices, most similar first
        pa.field("weights", pa.list_(pa.float32()), nullable=False),  # sum to 1
        pa.field("seen_users", pa.list_(pa.int32()), nullable=False),
    ],
    metadata={"contract": "new-items", "version": "1"},
)

#: The rules of a features partition (``rules.parquet``) in its index space, as preprocess resolved
#: them for the run date: ``exclude`` (``item_index``; the ``exclude`` rules and the items outside
#: their availability window), ``block`` (``user_index`` + ``item_index``), ``allow``
#: (``segment`` + ``item_index``) and ``member`` (``user_index`` + ``segment``: the user's segment,
#: written only for segments that have an allow-list). Item indices ``len(item_map) + j`` are new
#: item ``j`` (``NEW_ITEMS``).
SCORING_RULES = pa.schema(
    [
        pa.field("rule", pa.string(), nullable=False),
        pa.field("user_index", pa.int32()),
        pa.field("item_index", pa.int32()),
        pa.field("segment", pa.string()),
    ],
    metadata={"contract": "scoring-rules", "version": "1"},
)

#: Item categories of a features partition (``item_categories.parquet``), one row per (item,
#: category), over warm and new items (index ``len(item_map) + j`` = new item ``j``): what the
#: diversity metric and MMR re-ranking compare items by.
ITEM_CATEGORIES = pa.schema(
    [pa.field("item_index", pa.int32(), nullable=False), pa.field("category", pa.string(), nullable=False)],
    metadata={"contract": "item-categories", "version": "1"},
)

#: Published similar items: one row per catalogue item, its most similar items best first
#: (``nightly_topn.similar``), sorted by ``item_id``.
SIMILAR = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("logical_date", pa.date32(), nullable=False),
    ],
    metadata={"contract": "similar-items", "version": "1"},
)

#: Published top-N: one row per user, items ranked best first.
TOPN = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "model" or "fallback"
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("logical_date", pa.date32(), nullable=False),
        # the user's A/B arm ("champion" or "challenger", nightly_topn.experiments); versions written
        # before contract version 2 have no such column: every user there is the champion's
        pa.field("arm", pa.string(), nullable=False),
    ],
    metadata={"contract": "topn", "version": "2"},
)


def conform(table: pa.Table, schema: pa.Schema, *, source: str = "table", check_nulls: bool = True) -> pa.Table:
    """Select and cast ``table`` to ``schema``; missing optional columns become nulls.

    Raises ``BadInput`` (a ``ValueError``) naming ``source`` and the column when a required
    column is missing or values cannot be cast (with how many), so bad input fails at the
    boundary with a readable one-line message that never quotes the data itself.
    ``check_nulls=False`` lets nulls through (with a nullable field) for raw landing, where the
    data-quality gate decides what null ids mean.
    """
    columns, fields = [], []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise BadInput(f"{source}: required column {field.name!r} is missing ({_found(table, schema, field)})")
            columns.append(pa.nulls(table.num_rows, field.type))
            fields.append(field)
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise BadInput(
                    f"{source}: column {field.name!r} has type {column.type}, expected {field.type}: "
                    f"{cast_problem(column, field.type, exc)}"
                ) from exc
        if not check_nulls:
            field = field.with_nullable(True)
        elif not field.nullable and column.null_count:
            raise BadInput(f"{source}: column {field.name!r} has {column.null_count} null value(s)")
        columns.append(column)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


def _found(table: pa.Table, schema: pa.Schema, missing: pa.Field) -> str:
    """What the table has instead, without echoing arbitrary header text: a file without a header
    line has its first data row (maybe a secret) as column names."""
    def norm(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    known = [name for name in table.column_names if name in schema.names]
    others = table.num_columns - len(known)
    text = f"found {', '.join(known) or 'no contract column'}" + (f" and {others} other column(s)" if others else "")
    near = [name for name in table.column_names if name not in schema.names and norm(name) == norm(missing.name)]
    if near:
        return f"{text}; {near[0]!r} differs from it only in case or punctuation"
    return text + ("" if known else "; is the header line missing?")


def cast_problem(column: pa.ChunkedArray, target: pa.DataType, exc: Exception) -> str:
    """Why ``column`` does not cast to ``target``, as "N of M value(s) ..." where that can be
    counted -- never the offending values (Arrow's message quotes them: they may be secrets)."""
    bad = _uncastable(column, target)
    if bad:
        return f"{bad} of {len(column)} value(s) cannot be read as {target}"
    text = str(exc)
    if text.startswith("Unsupported cast"):
        return f"no conversion from {column.type} to {target}"
    if "would lose data" in text:
        return f"values do not fit {target} without losing data"
    return f"values cannot be read as {target}"


def _uncastable(column: pa.ChunkedArray, target: pa.DataType) -> int:
    """How many non-null values of ``column`` fail to convert to ``target`` (0: not counted)."""
    import pandas as pd

    try:
        values = column.to_pandas()
        if pa.types.is_integer(target) or pa.types.is_floating(target):
            parsed = pd.to_numeric(values, errors="coerce")
        elif pa.types.is_timestamp(target):
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        else:
            return 0
        return int((values.notna() & parsed.isna()).sum())
    except Exception:  # noqa: BLE001 - counting is best effort; the caller still refuses the column
        return 0
