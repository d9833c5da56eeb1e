"""The canonical dataset folder's schema: its tables, their columns and types, keys and
required columns.

Every dataset source (MovieLens, synthetic, a user's own folder) lands in this shape
(``../shared/DESIGN.md``)::

    users.parquet         user_id int64, age int64, gender str, occupation str, zip_code str,
                          valid_from timestamp[us, UTC]
    items.parquet         item_id int64, title str, release_year int64 (nullable), genres list<str>,
                          valid_from timestamp[us, UTC]
    interactions.parquet  user_id int64, item_id int64, rating float64 (nullable),
                          event_timestamp timestamp[us, UTC]

Users and items keep one row per entity: its current attributes, true since ``valid_from``
(the Unix epoch for a source's first ingest, and for a folder or row without the column).
Superseded versions live in the optional ``users_history.parquet`` / ``items_history.parquet``
(same columns, one row per (id, valid_from), each earlier than the entity's current row), so
profiles and item attributes are time series (``recsys.features.render``).

A folder is checked against it, cast and copied by :mod:`recsys.validation.folder`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

VALID_FROM = "valid_from"  # when a user or item row became true
VALID_FROM_TYPE = pa.timestamp("us", tz="UTC")
USERS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("age", pa.int64()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("zip_code", pa.string()),
        (VALID_FROM, VALID_FROM_TYPE),
    ]
)
ITEMS = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("release_year", pa.int64()),
        ("genres", pa.list_(pa.string())),
        (VALID_FROM, VALID_FROM_TYPE),
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
# The columns a source provides (every column but valid_from), stamped by `stamped_at_epoch`.
USERS_UNSTAMPED = USERS.remove(USERS.get_field_index(VALID_FROM))
ITEMS_UNSTAMPED = ITEMS.remove(ITEMS.get_field_index(VALID_FROM))
TABLES: dict[str, pa.Schema] = {"users": USERS, "items": ITEMS, "interactions": INTERACTIONS}
# The optional tables of superseded user / item versions: the entity table's schema.
HISTORY = {"users": "users_history", "items": "items_history"}
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


def attributes(table: str) -> list[str]:
    """The columns of a user or item version besides its key and ``valid_from``."""
    return [n for n in TABLES[table].names if n not in (PRIMARY_KEYS[table], VALID_FROM)]


def stamped_at_epoch(table: pa.Table) -> pa.Table:
    """A source's user or item table with ``valid_from`` at the epoch: known from the start."""
    import numpy as np

    zeros = pa.array(np.zeros(len(table), dtype=np.int64), type=VALID_FROM_TYPE)  # the epoch
    return table.append_column(pa.field(VALID_FROM, VALID_FROM_TYPE), zeros)


EXAMPLES = 5  # example rows shown in an error


class DatasetValidationError(ValueError):
    """A dataset file does not match the canonical shape; the message says where and how."""
