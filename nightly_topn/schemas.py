"""The data contract: every table the system reads or writes, defined once as a pyarrow schema.

Loaders cast to these schemas at the boundary, so everything downstream can rely on
column names, types and nullability without re-checking them.
"""
from __future__ import annotations

import pyarrow as pa

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
    ],
    metadata={"contract": "user-attributes", "version": "1"},
)

#: Optional item attributes; ``categories`` drives diversity metrics and cold-start models.
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("release_time", pa.timestamp("us", tz="UTC")),
    ],
    metadata={"contract": "item-attributes", "version": "1"},
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

#: Published top-N: one row per user, items ranked best first.
TOPN = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "model" or "fallback"
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("logical_date", pa.date32(), nullable=False),
    ],
    metadata={"contract": "topn", "version": "1"},
)


def conform(table: pa.Table, schema: pa.Schema, *, source: str = "table", check_nulls: bool = True) -> pa.Table:
    """Select and cast ``table`` to ``schema``; missing optional columns become nulls.

    Raises ``ValueError`` naming ``source`` and the column when a required column is missing
    or a value cannot be cast, so bad input fails at the boundary with a readable message.
    ``check_nulls=False`` lets nulls through (with a nullable field) for raw landing, where the
    data-quality gate decides what null ids mean.
    """
    columns, fields = [], []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise ValueError(
                    f"{source}: required column {field.name!r} is missing "
                    f"(found columns: {', '.join(table.column_names)})"
                )
            columns.append(pa.nulls(table.num_rows, field.type))
            fields.append(field)
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(
                    f"{source}: column {field.name!r} has type {column.type}, expected {field.type}: {exc}"
                ) from exc
        if not check_nulls:
            field = field.with_nullable(True)
        elif not field.nullable and column.null_count:
            raise ValueError(f"{source}: column {field.name!r} has {column.null_count} null value(s)")
        columns.append(column)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))
