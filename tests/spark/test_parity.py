"""DuckDB and Spark give identical feature tables and training sets, row for row, from the
same declarations: on the hand-built leakage fixture (same-second ties, TTL expiry, window
edges), on Feast's tie and TTL join cases, and on 100K synthetic interactions (every view,
the training set, and what materialization leaves online). Mutations show the comparison
fails when the Spark side is wrong."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys import store as feast_store
from recsys.features.build import build_features
from recsys.features.catalog import CATALOG
from recsys.ingest import ingest
from recsys.settings import Settings
from recsys.training_set import FEATURE_SERVICE as SERVICE
from recsys.training_set import build_training_set, historical_features
from tests.conftest import SYNTHETIC_AS_OF, ts
from tests.spark.conftest import differing_views
from tests.test_leakage import JOIN_CASES, T2, T8D, _write_views, leakage_dataset  # noqa: F401

pytestmark = pytest.mark.spark

BUILT_AT = datetime(2025, 6, 1, tzinfo=UTC)  # one build time: created_timestamp compares too


def _leakage_build(tmp_path, dataset, engine):
    settings = Settings(
        data_dir=tmp_path / engine, dataset=str(dataset), offline_engine=engine,
        val_start=ts(T2), test_start=ts(T8D),
    )  # fmt: skip
    paths = settings.paths
    ingest(settings)
    build_features(paths.dataset, paths.features, paths.data_dir, recent_items=3,
                   built_at=BUILT_AT, settings=settings)  # fmt: skip
    store = feast_store.apply(paths, feast_store.feature_store_for(settings))
    build_training_set(settings, store)
    return settings


def test_leakage_fixture_same_tables_and_training_set(spark, tmp_path, leakage_dataset):  # noqa: F811
    duck = _leakage_build(tmp_path, leakage_dataset, "duckdb")
    on_spark = _leakage_build(tmp_path, leakage_dataset, "spark")
    assert type(feast_store.feature_store_for(on_spark).config.offline_store).__name__ == (
        "SparkAsofOfflineStoreConfig"
    )
    assert differing_views(duck.paths.features, on_spark.paths.features) == {}
    a = pq.read_table(duck.paths.training / "training_set.parquet")
    b = pq.read_table(on_spark.paths.training / "training_set.parquet")
    assert a.num_rows == 7 and a.schema.equals(b.schema)
    assert a.equals(b)
    # The fixture's same-second pair: neither row sees the other on either engine.
    assert b.filter(pc.equal(b["user_id"], 1))["user_interaction_count"].to_pylist()[:2] == [
        None,
        None,
    ]


def test_join_cases_ties_ttl_future(spark, tmp_path):
    """Feast's join semantics on Spark: latest row <= t, ties to the last created, TTL."""
    settings = Settings(data_dir=tmp_path / "data", offline_engine="spark")
    _write_views(settings.paths.features)
    feast_store.apply(settings.paths)
    store = feast_store.feature_store_for(settings)
    entity = pd.DataFrame(
        {
            "user_id": [c[0] for c in JOIN_CASES],
            "item_id": 1,
            "event_timestamp": [c[1] for c in JOIN_CASES],
        }
    )
    got = historical_features(store, entity).to_pandas()
    assert list(got.columns[:3]) == ["user_id", "item_id", "event_timestamp"]
    # The pandas frame (what towers.data reads) is the DuckDB store's: values and dtypes.
    frames = [
        s.get_historical_features(entity_df=entity, features=s.get_feature_service(SERVICE))
        .to_df()
        .sort_values(["user_id", "event_timestamp"], ignore_index=True)
        for s in (store, feast_store.feature_store(settings.paths, settings=Settings(
            data_dir=settings.data_dir)))
    ]  # fmt: skip
    pd.testing.assert_frame_equal(*frames)
    got = got.set_index(["user_id", "event_timestamp"])["user_interaction_count"]
    for user_id, when, right, *_ in JOIN_CASES:
        answer = got.loc[(user_id, when)]
        assert (None if pd.isna(answer) else answer) == right, (user_id, when)


def test_comparison_fails_on_wrong_tables(spark, tmp_path, leakage_dataset):  # noqa: F811
    """Mutations: a table shifted by 1 µs, and Spark SQL stamping a value at its events'
    own time (a same-second leak), are both caught."""
    from recsys.features import build as build_module
    from recsys.spark import features as spark_features

    duck = _leakage_build(tmp_path, leakage_dataset, "duckdb")
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for view in CATALOG.views:
        table = pq.read_table(duck.paths.features / f"{view.name}.parquet")
        if view.name == "user_activity":
            stamps = pc.add(table["event_timestamp"], pd.Timedelta(microseconds=1))
            table = table.set_column(table.schema.get_field_index("event_timestamp"),
                                     "event_timestamp", stamps)  # fmt: skip
        pq.write_table(table, shifted / f"{view.name}.parquet")
    assert list(differing_views(duck.paths.features, shifted)) == ["user_activity"]

    leaky = Settings(data_dir=tmp_path / "leaky", dataset=str(leakage_dataset),
                     offline_engine="spark")  # fmt: skip
    ingest(leaky)
    leaky.paths.features.mkdir()
    original = spark_features.to_spark
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            spark_features, "to_spark",
            lambda sql: original(sql).replace(" + INTERVAL '1' MICROSECOND", ""),
        )  # fmt: skip
        build_module.compute_features(
            leaky.paths.dataset, leaky.paths.features, recent_items=3,
            built_at=BUILT_AT, settings=leaky,
        )  # fmt: skip
    diff = differing_views(duck.paths.features, leaky.paths.features)
    assert set(diff) == {"user_activity", "item_popularity"}


@pytest.fixture(scope="module")
def synthetic_pair(spark, tmp_path_factory):
    """The foundation (ingest, features, Feast, training set, online store) on 100K synthetic
    interactions, built on each engine."""
    from recsys.pipeline import build

    built = {}
    for engine in ("duckdb", "spark"):
        settings = Settings(
            data_dir=tmp_path_factory.mktemp(engine) / "data", dataset="synthetic",
            synthetic_interactions=100_000, synthetic_seed=3, as_of=SYNTHETIC_AS_OF,
            offline_engine=engine,
        )  # fmt: skip
        build(settings)
        built[engine] = settings
    return built["duckdb"], built["spark"]


def _without_created(folder, view):
    """A view's table without its build time (the two builds ran at different times)."""
    table = pq.read_table(folder / f"{view}.parquet")
    return table.drop_columns([c for c in table.column_names if c == "created_timestamp"])


def test_synthetic_100k_same_tables(synthetic_pair):
    duck, on_spark = synthetic_pair
    for view in CATALOG.views:
        a = _without_created(duck.paths.features, view.name)
        b = _without_created(on_spark.paths.features, view.name)
        assert a.num_rows >= 1_000, view.name
        # Written sorted by key and time on both engines, so no sort is needed here.
        assert a.schema.equals(b.schema), view.name
        assert a.equals(b), view.name


def test_synthetic_100k_same_training_set_and_online_values(synthetic_pair):
    duck, on_spark = synthetic_pair
    a = pq.read_table(duck.paths.training / "training_set.parquet")
    b = pq.read_table(on_spark.paths.training / "training_set.parquet")
    assert a.num_rows > 50_000
    assert pc.mean(pc.is_valid(a["item_count_30d"]).cast("int8")).as_py() > 0.5
    assert a.schema.equals(b.schema)
    assert a.equals(b)
    # Materialization pulls (latest row per entity as of as_of) agree too.
    for view in CATALOG.views:
        x = _without_created(duck.paths.online_snapshot, view.name)
        y = _without_created(on_spark.paths.online_snapshot, view.name)
        key = view.key
        assert x.num_rows > 0
        assert x.sort_by(key).equals(y.sort_by(key)), view.name
