"""Feature tables on Spark SQL: the queries `recsys.features.render` renders from the
declarations, transpiled to Spark (`recsys.features.dialect`), each view written as the same
single parquet file DuckDB writes (same columns, order, types, rows sorted by key and time).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from recsys.features.dialect import to_spark
from recsys.features.spec import ARROW_TYPES, View
from recsys.spark.io import write_parquet

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

TIMESTAMP = pa.timestamp("us", tz="UTC")


def view_schema(view: View, columns: list[str]) -> pa.Schema:
    """The Arrow schema of ``view``'s table with its columns in the query's order: the key
    int64, timestamps µs UTC, each feature its declared type (what DuckDB writes)."""
    types = {f.name: ARROW_TYPES[f.dtype] for f in view.features}
    types |= {view.key: pa.int64(), "event_timestamp": TIMESTAMP, "created_timestamp": TIMESTAMP}
    return pa.schema([(c, types[c]) for c in columns])


def write_view(spark: SparkSession, view: View, duckdb_sql: str, out: Path) -> int:
    """Run ``view``'s query on Spark and write its rows, sorted by key and time, to ``out``;
    the number of rows."""
    frame = spark.sql(to_spark(duckdb_sql)).orderBy(view.key, "event_timestamp")
    return write_parquet(frame, out, view_schema(view, frame.columns))
