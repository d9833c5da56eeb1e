"""The canonical dataset folder's schema: its tables, their columns and types, keys and
required columns.

Every dataset source (MovieLens, synthetic, a user's own folder) lands in this shape
(``../shared/DESIGN.md``)::

    users.parquet         user_id int64, age int64, gender str, occupation str, zip_code str
    items.parquet         item_id int64, title str, release_year int64 (nullable), genres list<str>
    interactions.parquet  user_id int64, item_id int64, rating float64 (nullable),
                          event_timestamp timestamp[us, UTC]

A folder is checked against it, cast and copied by :mod:`recsys.validation.folder`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

USERS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("age", pa.int64()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("zip_code", pa.string()),
    ]
)
ITEMS = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("release_year", pa.int64()),
        ("genres", pa.list_(pa.string())),
    ]
)
INTERACTIONS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("rating", pa.float64()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ]
)
TABLES: dict[str, pa.Schema] = {"users": USERS, "items": ITEMS, "interactions": INTERACTIONS}
# An optional interactions column: the sender's own id of each event. A dataset that has it
# identifies events by it (re-sent events are recognised by id); one without it identifies
# them by (user_id, item_id, event_timestamp).
EVENT_ID = "event_id"
INTERACTIONS_WITH_ID = INTERACTIONS.append(pa.field(EVENT_ID, pa.string()))


def has_event_id(path: Path) -> bool:
    """Whether an interactions parquet file carries the optional ``event_id`` column."""
    return EVENT_ID in pq.read_schema(path).names


# Columns that may never be null; every other column is optional information.
REQUIRED = {
    "users": ("user_id",),
    "items": ("item_id",),
    "interactions": ("user_id", "item_id", "event_timestamp"),
}
PRIMARY_KEYS = {"users": "user_id", "items": "item_id"}
EXAMPLES = 5  # example rows shown in an error


class DatasetValidationError(ValueError):
    """A dataset file does not match the canonical shape; the message says where and how."""
