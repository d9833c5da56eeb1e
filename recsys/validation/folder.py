"""A dataset folder checked against the canonical schema (``recsys.schema``) in DuckDB, its
normalised copy and its summary.

Validation runs in DuckDB (streaming, so it scales to tens of millions of rows) and stops
at the first problem with an error that names the file, the column and example rows.
Compatible types are cast when no value changes (:mod:`recsys.casts` has the rules: whole
doubles to int64, nanoseconds to microseconds, naive or zoned timestamps to UTC, ISO-8601
text to timestamps, ...); each cast is logged and returned, and :func:`check_casts` and
:func:`read_canonical` apply the same rules to one file, such as an incoming batch.

Users and items: a source without ``valid_from`` (or a row with it null) gets the Unix epoch;
the optional ``users_history`` / ``items_history`` tables, when present, are checked (one row
per (id, valid_from), every id in the current table, every version earlier than the current
one) and copied too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import DuckDBPyConnection

from recsys.casts import Cast, log_casts, rule, scan_values
from recsys.schema import (
    EVENT_ID,
    EXAMPLES,
    HISTORY,
    PRIMARY_KEYS,
    REQUIRED,
    TABLES,
    VALID_FROM,
    DatasetValidationError,
    has_event_id,
)
from recsys.sql import connect, identifier, one, parquet, string

EPOCH_SQL = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"


@dataclass(frozen=True)
class DatasetSummary:
    users: int
    items: int
    interactions: int
    first_event: str
    last_event: str
    # The casts applied on load (recsys.casts.Cast.as_dict()), file by file: what was converted.
    casts: list[dict[str, Any]] = field(default_factory=list)


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


def _select(schema: pa.Schema, names: list[str], cast: set[str] | None = None) -> str:
    """A select list: the ``cast`` columns (default: the canonical ones) cast to their exact
    canonical types, any other column as stored."""
    cast = set(schema.names) if cast is None else cast
    return ", ".join(
        f"CAST({identifier(n)} AS {_sql_type(schema.field(n).type)}) AS {identifier(n)}"
        if n in cast
        else identifier(n)
        for n in names
    )


def _scan(path: Path) -> str:
    return f"read_parquet({string(str(path))}, file_row_number = true)"


def _fail(
    con: DuckDBPyConnection, path: Path, column: str | None, problem: str, where: str | None = None
) -> NoReturn:
    message = f"{path}: column '{column}' {problem}" if column else f"{path}: {problem}"
    if where is not None:
        rows = con.execute(
            f"SELECT * EXCLUDE (file_row_number), file_row_number AS row "
            f"FROM {_scan(path)} WHERE {where} ORDER BY row LIMIT {EXAMPLES}"
        ).fetchdf()
        table = rows.to_string(index=False)
        message += f"\nexample rows (row = 0-based row number in the file):\n{table}"
    raise DatasetValidationError(message)


def _fail_if(con: DuckDBPyConnection, path: Path, column: str, problem: str, where: str) -> None:
    (count,) = one(con, f"SELECT count(*) FROM {_scan(path)} WHERE {where}")
    if count:
        _fail(con, path, column, f"{problem} ({count} rows)", where)


def _stored_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetValidationError(f"{path}: not a readable parquet file ({exc})") from exc


def check_casts(
    path: Path, table: str, con: DuckDBPyConnection | None = None, keep_incompatible: bool = False
) -> list[Cast]:
    """The casts that bring the columns of ``path`` to ``table``'s canonical types (logged).

    Raises :class:`DatasetValidationError` naming the file, the column, the problem and example
    rows when a cast would change values, or when a column has a type no cast bridges (unless
    ``keep_incompatible``: such a column is then left for a type check). Rules:
    :mod:`recsys.casts`. Canonical columns the file lacks are left to the caller.
    """
    path, schema, con = Path(path), TABLES[table], con or connect()
    stored = _stored_schema(path)
    rules = {}
    for expected in schema:
        if expected.name in stored.names:
            got = stored.field(expected.name).type
            found = rule(expected.type, got)
            if found is not None:
                rules[expected.name] = found
            elif not keep_incompatible:
                _fail(con, path, expected.name, f"has type {got}, expected {expected.type}", "true")
    rows = pq.ParquetFile(path).metadata.num_rows
    checks = {c: r.check for c, r in rules.items() if r.check is not None}
    for column, finding in scan_values(path, checks, EXAMPLES).items():
        if finding.count:
            values = "; ".join(f"row {row}: {value}" for row, value in finding.examples)
            numbers = ", ".join(str(row) for row, _ in finding.examples)
            problem = (
                f"has type {stored.field(column).type}, expected {schema.field(column).type}, "
                f"and {finding.count} of {rows} rows hold {rules[column].unsafe} "
                f"(e.g. {values}); {rules[column].fix}"
            )
            _fail(con, path, column, problem, f"file_row_number IN ({numbers})")
    for column in rules:
        if pa.types.is_timestamp(schema.field(column).type):
            _check_timestamps(con, path, column, stored.field(column).type)
    casts = [
        Cast(table, column, str(stored.field(column).type), str(schema.field(column).type), rows,
             found.note)
        for column, found in rules.items()
        if stored.field(column).type != schema.field(column).type
    ]  # fmt: skip
    log_casts(casts, path)
    return casts


def _check_timestamps(con: DuckDBPyConnection, path: Path, column: str, got: pa.DataType) -> None:
    if pa.types.is_null(got):
        return  # no values; a required column's nulls are reported by the null check
    # DuckDB also casts the text 'infinity' / '-infinity' (and reads int64-max values)
    # as infinite timestamps: no event time, and out of range for Arrow / Python.
    parsed = f"TRY_CAST({identifier(column)} AS TIMESTAMPTZ)"
    problem = (
        "has values that are not parseable, finite timestamps (use ISO 8601, e.g. "
        "'2024-05-01 12:00:00+00')"
    )
    where = f"{identifier(column)} IS NOT NULL AND ({parsed} IS NULL OR NOT isfinite({parsed}))"
    _fail_if(con, path, column, problem, where)


def read_canonical(path: Path, table: str) -> tuple[pa.Table, list[Cast]]:
    """Read one file with its canonical columns cast to their exact types; and the casts.

    Casts that would change values raise as in :func:`check_casts`. A column of a type no cast
    bridges, any other extra column, is kept as stored (for a type check to report); pandas'
    saved index is dropped; missing columns stay missing.
    """
    path, schema, con = Path(path), TABLES[table], connect()
    casts = check_casts(path, table, con, keep_incompatible=True)
    stored = _stored_schema(path)
    index = (stored.pandas_metadata or {}).get("index_columns", [])
    names = [n for n in stored.names if n not in index]
    castable = {
        n for n in names if n in schema.names and rule(schema.field(n).type, stored.field(n).type)
    }
    query = f"SELECT {_select(schema, names, castable)} FROM read_parquet({string(str(path))})"
    return con.execute(query).to_arrow_table(), casts


class _Validator:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.con = connect()

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"

    def fail_if(self, name: str, column: str, problem: str, where: str) -> None:
        _fail_if(self.con, self.path(name), column, problem, where)

    def check_file(self, name: str, schema: pa.Schema) -> list[Cast]:
        path = self.path(name)
        if not path.is_file():
            raise DatasetValidationError(
                f"{path}: file is missing; a dataset folder needs users.parquet, items.parquet "
                f"and interactions.parquet (columns: {', '.join(schema.names)})"
            )
        actual = _stored_schema(path)
        optional = {VALID_FROM} if name in PRIMARY_KEYS else set()  # absent: the epoch
        missing = [c for c in schema.names if c not in actual.names and c not in optional]
        if missing:
            # Example rows show what the file holds instead (often the column under another name).
            found = f"missing column(s) {missing}; found {actual.names}, expected {schema.names}"
            _fail(self.con, path, None, found, where="true")
        casts = check_casts(path, name, self.con)
        for column in REQUIRED[name]:
            self.fail_if(
                name, column, "has null values; it identifies the row", f"{column} IS NULL"
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
        if name == "interactions" and EVENT_ID in actual.names:
            self.fail_if(name, EVENT_ID, "has null values; it identifies the event",
                         f"{EVENT_ID} IS NULL")  # fmt: skip
            self.fail_if(
                name, EVENT_ID, "has duplicate values; it must identify each event once",
                f"{EVENT_ID} IN (SELECT {EVENT_ID} FROM {_scan(path)} GROUP BY {EVENT_ID} "
                f"HAVING count(*) > 1)",
            )  # fmt: skip
        return casts

    def check_history(self, table: str) -> list[Cast]:
        """The superseded versions of ``table``'s entities, when the folder has them."""
        name, key = HISTORY[table], PRIMARY_KEYS[table]
        path, schema = self.path(name), TABLES[table]
        if not path.is_file():
            return []
        actual = _stored_schema(path)
        missing = [c for c in schema.names if c not in actual.names]
        if missing:
            found = f"missing column(s) {missing}; found {actual.names}, expected {schema.names}"
            _fail(self.con, path, None, found, where="true")
        casts = check_casts(path, table, self.con)
        for column in (key, VALID_FROM):
            self.fail_if(name, column, "has null values; it identifies the version",
                         f"{column} IS NULL")  # fmt: skip
        self.fail_if(
            name, VALID_FROM, f"has duplicate ({key}, valid_from) values; one row per version",
            f"({key}, {VALID_FROM}) IN (SELECT ({key}, {VALID_FROM}) FROM {_scan(path)} "
            f"GROUP BY {key}, {VALID_FROM} HAVING count(*) > 1)",
        )  # fmt: skip
        current = (f"SELECT {key} AS _id, {_valid_from(self.path(table))} AS _vf "
                   f"FROM {_scan(self.path(table))}")  # fmt: skip
        self.fail_if(name, key, f"refers to {table} that are not in {table}.parquet",
                     f"{key} NOT IN (SELECT _id FROM ({current}))")  # fmt: skip
        self.fail_if(
            name, VALID_FROM,
            f"has versions not earlier than the current row in {table}.parquet (the current "
            f"row is the latest version; move it here and the latest version there)",
            f"EXISTS (SELECT 1 FROM ({current}) c WHERE c._id = {key} "
            f"AND c._vf <= CAST({VALID_FROM} AS TIMESTAMPTZ))",
        )  # fmt: skip
        return casts

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


def validate_dataset(folder: Path) -> list[Cast]:
    """Raise :class:`DatasetValidationError` unless ``folder`` holds a valid canonical dataset.

    Returns the casts that normalising it applies (see :mod:`recsys.casts`).
    """
    validator = _Validator(folder)
    casts = [c for name, schema in TABLES.items() for c in validator.check_file(name, schema)]
    casts += [c for table in HISTORY for c in validator.check_history(table)]
    validator.check_references()
    return casts


def _valid_from(path: Path) -> str:
    """``valid_from`` of a user or item file as a timestamp: the epoch when absent or null."""
    if VALID_FROM not in _stored_schema(path).names:
        return EPOCH_SQL
    return f"COALESCE(CAST({VALID_FROM} AS TIMESTAMPTZ), {EPOCH_SQL})"


def normalize_dataset(src: Path, dest: Path) -> DatasetSummary:
    """Validate ``src`` and write its normalised copy (exact canonical types) into ``dest``.

    The summary lists the casts applied (each also logged at INFO).
    """
    casts = validate_dataset(src)
    con = connect()
    files = {**{n: n for n in TABLES}, **{h: t for t, h in HISTORY.items()}}  # file → schema
    for name, table in files.items():
        if not (src / f"{name}.parquet").is_file():
            continue  # an absent history: no superseded versions
        schema = TABLES[table]
        columns = _select(schema, schema.names)
        if name == "interactions" and has_event_id(src / "interactions.parquet"):
            columns += f", CAST({EVENT_ID} AS VARCHAR) AS {EVENT_ID}"
        if table in PRIMARY_KEYS:
            names = [n for n in schema.names if n != VALID_FROM]
            columns = (
                f"{_select(schema, names)}, {_valid_from(src / f'{name}.parquet')} AS {VALID_FROM}"
            )
        # Interactions sorted by time: the feature SQL and Feast's time filters read less.
        order = {"interactions": " ORDER BY event_timestamp, user_id, item_id"}.get(table, "")
        if name != table:
            order = f" ORDER BY {PRIMARY_KEYS[table]}, {VALID_FROM}"
        out = string(str(dest / f"{name}.parquet"))
        con.execute(
            f"COPY (SELECT {columns} FROM {parquet(src, name)}{order}) "
            f"TO {out} (FORMAT parquet, COMPRESSION zstd)"
        )
    return replace(summarize(dest), casts=[c.as_dict() for c in casts])


def summarize(folder: Path) -> DatasetSummary:
    con = connect()
    scan = {n: parquet(folder, n) for n in TABLES}
    (users,), (items,) = (one(con, f"SELECT count(*) FROM {scan[n]}") for n in ("users", "items"))
    n, first, last = one(
        con,
        f"SELECT count(*), min(event_timestamp), max(event_timestamp) FROM {scan['interactions']}",
    )
    return DatasetSummary(users, items, n, str(first), str(last))
