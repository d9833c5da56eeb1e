"""The feature SQL's translation to Spark and the engine's selection, without a JVM: what
sqlglot gets wrong is rewritten (ordered lists, 1-based slices, epoch microseconds), the
DuckDB text is untouched, and the engine follows from Settings alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from recsys import store as feast_store
from recsys.features.catalog import CATALOG
from recsys.features.dialect import to_spark
from recsys.features.ops import Params
from recsys.features.render import view_sqls
from recsys.settings import Settings

AS_OF, BUILT = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)


def test_ordered_list_keeps_its_order_with_nulls_last():
    sql = to_spark("SELECT list(e.v ORDER BY e.a, e.b) FROM t e")
    assert sql == (
        "SELECT TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(e.a IS NULL AS k0, e.a AS k1, "
        "e.b IS NULL AS k2, e.b AS k3, e.v AS v))), x -> x.v) FROM t AS e"
    )
    with pytest.raises(NotImplementedError, match="ASC NULLS LAST"):
        to_spark("SELECT list(e.v ORDER BY e.a DESC) FROM t e")


def test_slices_epochs_and_reversal():
    sql = to_spark("SELECT list_reverse(flatten(list(x) OVER w))[2:5], epoch_us(ts) FROM t")
    assert (
        sql
        == "SELECT SLICE(REVERSE(FLATTEN(COLLECT_LIST(x) OVER w)), 2, 4), UNIX_MICROS(ts) FROM t"
    )


def test_every_view_translates_with_no_duckdb_only_function_left():
    params = Params(("Comedy", "Drama"), 20)
    for view in CATALOG.views:
        (duck,) = view_sqls(view, Path("/d"), AS_OF, BUILT, params, 1)
        spark = to_spark(duck)
        for duckdb_only in ("read_parquet", "epoch_us", "list_reverse", "list_contains", "::"):
            assert duckdb_only not in spark.lower(), (view.name, duckdb_only)
        assert "read_parquet" in duck  # the DuckDB text is what it was


def test_engine_follows_settings(tmp_path):
    assert Settings(data_dir=tmp_path).engine == "duckdb"
    assert Settings(data_dir=tmp_path, profile="cluster").engine == "spark"
    cluster_duck = Settings(data_dir=tmp_path, profile="cluster", offline_engine="duckdb")
    assert cluster_duck.engine == "duckdb"
    spark = Settings(data_dir=tmp_path, offline_engine="spark", spark_master="local[1]")
    offline = feast_store.repo_config(spark.paths, settings=spark).offline_store
    assert (offline.type, offline.master) == (
        "recsys.spark.offline_store.SparkAsofOfflineStore",
        "local[1]",
    )
    assert offline.scratch == str(tmp_path.resolve() / ".spark")
    local = feast_store.repo_config(spark.paths, settings=Settings(data_dir=tmp_path))
    assert local.offline_store.type == "recsys.offline_store.DuckDBAsofOfflineStore"
