"""Small helpers for the DuckDB SQL the pipeline writes: connections and literals.

Every value that reaches SQL text goes through one of the literal helpers here (paths,
strings, timestamps), so quoting lives in one place. DuckDB itself is imported by
:func:`connect` only: the feature declarations use the literals, and the server imports
them without the offline engine (tests/test_layers.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


def connect(memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC: naive timestamps and timestamp strings mean UTC.

    ``memory_limit`` (e.g. "3GB") bounds DuckDB's memory; past it, it spills to disk.
    """
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = {string(memory_limit)}")
    return con


def string(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted SQL identifier (a column name from a user's file may hold any character)."""
    return '"' + str(name).replace('"', '""') + '"'


def parquet(folder: Path, name: str) -> str:
    """``read_parquet`` of ``<folder>/<name>.parquet``."""
    return f"read_parquet({string(str(Path(folder) / f'{name}.parquet'))})"


def timestamp(value: datetime) -> str:
    """A TIMESTAMPTZ literal (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return f"TIMESTAMPTZ {string(value.astimezone(UTC).isoformat())}"


def one(con: duckdb.DuckDBPyConnection, query: str) -> tuple:
    """The single row of an aggregate query."""
    row = con.execute(query).fetchone()
    if row is None:
        raise RuntimeError(f"query returned no row: {query[:200]}")
    return row
