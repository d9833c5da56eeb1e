"""The training set on synthetic data: Feast's point-in-time join equals an independent
DuckDB ASOF join, the split follows the cuts, ``as_of`` hides everything after it, and the
Feast CLI works from a copy of the feature repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import store as feast_store
from recsys.settings import FEATURE_REPO
from recsys.sql import connect, parquet, timestamp
from recsys.training_set import historical_features
from tests.conftest import SYNTHETIC_AS_OF
from tests.pit_reference import comparable, pit_join, window_join_sql

AS_OF = SYNTHETIC_AS_OF


KEY = ["event_timestamp", "user_id", "item_id", "rating"]


def test_training_set_equals_independent_reference(synthetic_build):
    """The Feast training set (project store) equals a pandas merge_asof join, row for row."""
    settings, result = synthetic_build
    store = feast_store.feature_store(settings.paths)
    entity = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    entity = entity[entity.event_timestamp < AS_OF]
    views = store.get_feature_service("two_tower_training_v1").feature_view_projections
    reference = pit_join(entity, [store.get_feature_view(p.name) for p in views])
    ours = pd.read_parquet(result.training_set.path).drop(columns="split")[reference.columns]
    assert len(ours) == len(reference) > 10_000
    # Both joins must find values: a join that returns all nulls would "agree" trivially.
    assert ours["user_interaction_count"].notna().mean() > 0.5
    assert ours["item_count_30d"].notna().mean() > 0.5
    pd.testing.assert_frame_equal(comparable(ours, KEY), comparable(reference, KEY))
    # And a DuckDB reference without ASOF JOIN (the one the 10M benchmark check uses).
    entity_sql = (
        f"SELECT * FROM {parquet(settings.paths.dataset, 'interactions')} "
        f"WHERE event_timestamp < {timestamp(AS_OF)}"
    )
    views = [store.get_feature_view(p.name) for p in views]
    window = connect().sql(window_join_sql(entity_sql, views)).df()[reference.columns]
    pd.testing.assert_frame_equal(comparable(ours, KEY), comparable(window, KEY))


def test_project_store_equals_stock_feast_store(synthetic_build):
    """Same rows, same values as Feast's stock DuckDB store. The stock join's memory grows
    with (entity rows x feature rows) per key, so it gets the entity rows in chunks."""
    settings, result = synthetic_build
    stock = feast_store.feature_store(settings.paths, {"type": "duckdb"})
    entity = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    entity = entity[entity.event_timestamp < AS_OF].sample(3_000, random_state=0)
    chunks = [
        historical_features(stock, entity.iloc[i : i + 1000]).to_pandas() for i in (0, 1000, 2000)
    ]
    theirs = pd.concat(chunks, ignore_index=True)
    ours = historical_features(feast_store.feature_store(settings.paths), entity).to_pandas()
    assert list(ours.columns) == list(theirs.columns)
    pd.testing.assert_frame_equal(comparable(ours, KEY), comparable(theirs, KEY))


def test_entity_rows_in_any_form(synthetic_build, tmp_path):
    """DataFrame, parquet path, SQL, Arrow table and DuckDB relation give the same rows; the
    result also streams as Arrow batches and to parquet."""
    settings, _ = synthetic_build
    store = feast_store.feature_store(settings.paths)
    source = settings.paths.dataset / "interactions.parquet"
    frame = pd.read_parquet(source).head(500)
    path = tmp_path / "entity.parquet"
    frame.to_parquet(path)
    con = connect()
    forms = {
        "dataframe": frame,
        "path": str(path),
        "sql": f"SELECT * FROM read_parquet('{path}')",
        "arrow": pa.Table.from_pandas(frame),
        "relation": con.sql(f"SELECT * FROM read_parquet('{path}')"),
    }
    results = {name: historical_features(store, rows).to_pandas() for name, rows in forms.items()}
    expected = comparable(results["dataframe"], KEY)
    assert len(expected) == 500
    for name, got in results.items():
        pd.testing.assert_frame_equal(comparable(got, KEY), expected, obj=name)
    job = store.get_historical_features(
        entity_df=str(path), features=store.get_feature_service("two_tower_training_v1")
    )
    batches = list(job.to_arrow_batches(batch_size=128))
    assert sum(b.num_rows for b in batches) == 500 and max(b.num_rows for b in batches) <= 128
    out = job.to_parquet(tmp_path / "out" / "training.parquet")
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(out), KEY), expected)
    assert [p.name for p in out.parent.iterdir()] == ["training.parquet"]  # no temp file left


def test_as_of_hides_later_events(synthetic_build):
    settings, result = synthetic_build
    paths = settings.paths
    con = connect()
    (later,) = con.execute(
        f"SELECT count(*) FROM {parquet(paths.dataset, 'interactions')} "
        f"WHERE event_timestamp >= {timestamp(AS_OF)}"
    ).fetchone()
    assert later > 0  # the fixture has events after as_of, so the checks below mean something
    for view in ("user_activity", "item_popularity"):
        (stamped_after,) = con.execute(
            f"SELECT count(*) FROM {parquet(paths.features, view)} "
            f"WHERE event_timestamp > {timestamp(AS_OF)}"
        ).fetchone()
        assert stamped_after == 0, view
    (total,) = con.execute(
        f"SELECT sum(user_interaction_count) FROM (SELECT arg_max(user_interaction_count, "
        f"event_timestamp) AS user_interaction_count FROM {parquet(paths.features, 'user_activity')} "
        f"GROUP BY user_id)"
    ).fetchone()
    assert total == result.dataset.interactions - later
    table = pq.read_table(result.training_set.path)
    assert pd.Timestamp(pd.Series(table.column("event_timestamp").to_pylist()).max()) < AS_OF


def test_split_follows_cuts(synthetic_build):
    _, result = synthetic_build
    summary = result.training_set
    cuts = summary.cuts
    assert cuts.val_start < cuts.test_start < cuts.as_of == AS_OF
    frame = pd.read_parquet(summary.path, columns=["event_timestamp", "split", "user_id"])
    assert (frame.loc[frame.split == "train", "event_timestamp"] < cuts.val_start).all()
    val = frame.loc[frame.split == "val", "event_timestamp"]
    assert ((val >= cuts.val_start) & (val < cuts.test_start)).all()
    assert (frame.loc[frame.split == "test", "event_timestamp"] >= cuts.test_start).all()
    # Default fractions 80 / 10 / 10, within the slack of ties at the quantile timestamps.
    shares = frame.split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.02)
    assert shares["test"] == pytest.approx(0.1, abs=0.02)
    assert summary.cold_test_users > 0 and summary.users["test"] > summary.cold_test_users


def test_feast_cli_from_the_repo_folder(synthetic_build, tmp_path):
    """`feast apply` and `feast materialize(-incremental)` run from a copy of feature_repo/
    whose sibling data/ folder holds the features, as in a fresh checkout."""
    settings, result = synthetic_build
    repo = tmp_path / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(settings.paths.features.resolve(), tmp_path / "data" / "features")
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_DATA_DIR"}
    feast = [sys.executable, "-m", "feast.cli.cli"]

    def run(*args: str) -> str:
        done = subprocess.run([*feast, *args], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run("apply")
    run("materialize", "1970-01-01T00:00:00", "2024-06-01T00:00:00")
    run("materialize-incremental", AS_OF.strftime("%Y-%m-%dT%H:%M:%S"))
    from recsys.settings import Paths

    store = feast_store.feature_store(Paths(tmp_path / "data"))
    users = pd.read_parquet(settings.paths.dataset / "users.parquet").user_id.head(50).tolist()
    online = store.get_online_features(
        features=["user_activity:user_interaction_count"],
        entity_rows=[{"user_id": u} for u in users],
    ).to_dict()
    latest = (
        connect()
        .execute(
            f"SELECT user_id, arg_max(user_interaction_count, event_timestamp) FROM "
            f"{parquet(settings.paths.features, 'user_activity')} GROUP BY user_id"
        )
        .fetchall()
    )
    expected = dict(latest)
    assert online["user_interaction_count"] == [expected.get(u) for u in users]
    assert sum(v is not None for v in online["user_interaction_count"]) > 10
