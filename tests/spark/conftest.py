"""Fixtures of the Spark engine's tests (marked ``spark``): one SparkSession for the whole
test session (`recsys.spark.session` keeps one per process), and a comparison of two data
folders' feature tables.

Without Java the tests are skipped with the reason; under ``CI=true`` they fail instead, so
that CI never passes by skipping (``.ci/services start`` installs a JRE).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.features.catalog import CATALOG
from recsys.settings import Settings


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The process's SparkSession (local[2]), stopped at the end of the test session."""
    if shutil.which("java") is None:
        reason = "no java on PATH: PySpark needs a JRE (run .ci/services start)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from recsys.spark.session import spark_session, stop_session

    settings = Settings(data_dir=tmp_path_factory.mktemp("spark"), offline_engine="spark")
    yield spark_session(settings)
    stop_session()


def sorted_table(path: Path, key: str) -> pa.Table:
    table = pq.read_table(path)
    order = [(key, "ascending"), ("event_timestamp", "ascending")]
    if "created_timestamp" in table.column_names:
        order.append(("created_timestamp", "ascending"))
    return table.sort_by(order)


def differing_views(left: Path, right: Path) -> dict[str, str]:
    """The views whose tables differ between two features folders (sorted by key, time and
    created time; schema, row count and every value exact), with what differs."""
    out = {}
    for view in CATALOG.views:
        a = sorted_table(left / f"{view.name}.parquet", view.key)
        b = sorted_table(right / f"{view.name}.parquet", view.key)
        if not a.schema.equals(b.schema):
            out[view.name] = f"schema {a.schema} != {b.schema}"
        elif a.num_rows != b.num_rows:
            out[view.name] = f"{a.num_rows} != {b.num_rows} rows"
        elif not a.equals(b):
            bad = [c for c in a.column_names if not a[c].equals(b[c])]
            out[view.name] = f"columns {bad} differ"
    return out
