"""The canonical dataset folder: its schema, its validation, and its normalised copy.

Every dataset source (MovieLens, synthetic, a user's own folder) lands in this shape
(``../shared/DESIGN.md``)::

    users.parquet         user_id int64, age int64, gender str, occupation str, zip_code str
    items.parquet         item_id int64, title str, release_year int64 (nullable), genres list<str>
    interactions.parquet  user_id int64, item_id int64, rating float64 (nullable),
                          event_timestamp timestamp[us, UTC]

Validation runs in DuckDB (streaming, so it scales to tens of millions of rows) and stops
at the first problem with an error that names the file, the column and example rows.
Compatible types are accepted and normalised (any integer width for ids, any timestamp unit
or timezone, ISO-8601 strings for timestamps; naive timestamps are read as UTC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.sql import connect, one, parquet, string

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


@dataclass(frozen=True)
class DatasetSummary:
    users: int
    items: int
    interactions: int
    first_event: str
    last_event: str


def _accepts(expected: pa.DataType) -> Callable[[pa.DataType], bool]:
    """Which physical types can be normalised losslessly to ``expected``."""
    if pa.types.is_integer(expected):
        return pa.types.is_integer
    if pa.types.is_floating(expected):
        return lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)
    if pa.types.is_string(expected):
        return lambda t: (
            pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))
        )
    if pa.types.is_timestamp(expected):
        text = _accepts(pa.string())  # ISO-8601 strings in any string encoding
        return lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t) or text(t)
    if pa.types.is_list(expected):
        return lambda t: (
            (pa.types.is_list(t) or pa.types.is_large_list(t))
            and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))
        )
    raise TypeError(expected)


def _sql_type(expected: pa.DataType) -> str:
    if pa.types.is_integer(expected):
        return "BIGINT"
    if pa.types.is_floating(expected):
        return "DOUBLE"
    if pa.types.is_string(expected):
        return "VARCHAR"
    if pa.types.is_timestamp(expected):
        return "TIMESTAMPTZ"
    return "VARCHAR[]"


def _scan(path: Path) -> str:
    return f"read_parquet({string(str(path))}, file_row_number = true)"


class _Validator:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.con = connect()

    def fail(self, file: str, column: str | None, problem: str, where: str | None = None) -> None:
        path = self.folder / f"{file}.parquet"
        message = f"{path}: column '{column}' {problem}" if column else f"{path}: {problem}"
        if where is not None:
            rows = self.con.execute(
                f"SELECT * EXCLUDE (file_row_number), file_row_number AS row "
                f"FROM {_scan(path)} WHERE {where} ORDER BY row LIMIT {EXAMPLES}"
            ).fetchdf()
            message += f"\nexample rows (row = 0-based row number in the file):\n{rows.to_string(index=False)}"
        raise DatasetValidationError(message)

    def check_file(self, name: str, schema: pa.Schema) -> None:
        path = self.folder / f"{name}.parquet"
        if not path.is_file():
            raise DatasetValidationError(
                f"{path}: file is missing; a dataset folder needs users.parquet, items.parquet "
                f"and interactions.parquet (columns: {', '.join(schema.names)})"
            )
        try:
            actual = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DatasetValidationError(f"{path}: not a readable parquet file ({exc})") from exc
        missing = [c for c in schema.names if c not in actual.names]
        if missing:
            # Example rows show what the file holds instead (often the column under another name).
            self.fail(
                name,
                None,
                f"missing column(s) {missing}; found {actual.names}, expected {schema.names}",
                where="true",
            )
        for field in schema:
            got = actual.field(field.name).type
            if not _accepts(field.type)(got):
                self.fail(
                    name,
                    field.name,
                    f"has type {got}, expected {field.type}",
                    where="true",
                )
        for column in REQUIRED[name]:
            self.fail_if(
                name, column, "has null values; it identifies the row", f"{column} IS NULL"
            )
        if name == "interactions":
            # DuckDB also casts the text 'infinity' / '-infinity' (and reads int64-max values)
            # as infinite timestamps: no event time, and out of range for Arrow / Python.
            parsed = "TRY_CAST(event_timestamp AS TIMESTAMPTZ)"
            self.fail_if(
                name,
                "event_timestamp",
                "has values that are not parseable, finite timestamps (use ISO 8601, e.g. "
                "'2024-05-01 12:00:00+00')",
                f"event_timestamp IS NOT NULL AND ({parsed} IS NULL OR NOT isfinite({parsed}))",
            )
        if name in PRIMARY_KEYS:
            key = PRIMARY_KEYS[name]
            self.fail_if(
                name,
                key,
                "has duplicate values; it must identify each row once",
                f"{key} IN (SELECT {key} FROM {_scan(path)} GROUP BY {key} HAVING count(*) > 1)",
            )
        if name == "interactions":
            self.fail_if(name, "rating", "has non-finite values", "isnan(rating) OR isinf(rating)")

    def fail_if(self, name: str, column: str, problem: str, where: str) -> None:
        path = self.folder / f"{name}.parquet"
        (count,) = one(self.con, f"SELECT count(*) FROM {_scan(path)} WHERE {where}")
        if count:
            self.fail(name, column, f"{problem} ({count} rows)", where)

    def check_references(self) -> None:
        for entity in ("user", "item"):
            key = f"{entity}_id"
            known = _scan(self.folder / f"{entity}s.parquet")
            self.fail_if(
                "interactions",
                key,
                f"refers to {entity}s that are not in {entity}s.parquet",
                f"{key} NOT IN (SELECT {key} FROM {known})",
            )


def validate_dataset(folder: Path) -> None:
    """Raise :class:`DatasetValidationError` unless ``folder`` holds a valid canonical dataset."""
    validator = _Validator(folder)
    for name, schema in TABLES.items():
        validator.check_file(name, schema)
    validator.check_references()


def normalize_dataset(src: Path, dest: Path) -> DatasetSummary:
    """Validate ``src`` and write its normalised copy (exact canonical types) into ``dest``."""
    validate_dataset(src)
    con = connect()
    for name, schema in TABLES.items():
        columns = ", ".join(
            f"CAST({field.name} AS {_sql_type(field.type)}) AS {field.name}" for field in schema
        )
        # Interactions sorted by time: the feature SQL and Feast's time filters read less.
        order = " ORDER BY event_timestamp, user_id, item_id" if name == "interactions" else ""
        out = string(str(dest / f"{name}.parquet"))
        con.execute(
            f"COPY (SELECT {columns} FROM {parquet(src, name)}{order}) "
            f"TO {out} (FORMAT parquet, COMPRESSION zstd)"
        )
    return summarize(dest)


def summarize(folder: Path) -> DatasetSummary:
    con = connect()
    scan = {n: parquet(folder, n) for n in TABLES}
    (users,), (items,) = (one(con, f"SELECT count(*) FROM {scan[n]}") for n in ("users", "items"))
    n, first, last = one(
        con,
        f"SELECT count(*), min(event_timestamp), max(event_timestamp) FROM {scan['interactions']}",
    )
    return DatasetSummary(users, items, n, str(first), str(last))
