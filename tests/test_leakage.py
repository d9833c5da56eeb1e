"""Leakage tests: a hand-built fixture in which every wrong point-in-time join gives a
different, detectable answer.

Wrong joins caught here, each by at least one row whose correct value differs from the
wrong one:
- a value from the same second (events at t visible at t),
- a value from the future (the latest row overall instead of the latest before t),
- TTL ignored (a stale value instead of null),
- a tie picked arbitrarily (rows with equal event time: the last created must win),
- a trailing window off by its boundary,
- a profile or item attribute from a version not in force yet, or superseded (user 1 and
  item 13 have an older version in the dataset's history tables).
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import store as feast_store
from recsys.asof import asof_join_sql, prepare, view_specs, without_needless_tiebreaks
from recsys.features.build import build_features
from recsys.features.ops import EPOCH
from recsys.ingest import ingest
from recsys.schema import TABLES
from recsys.sql import connect
from recsys.training_set import build_training_set, historical_features
from tests.conftest import event, item, ts, user, write_dataset
from tests.pit_reference import comparable, pit_join, window_join_sql

T0, T1, T2 = "2024-01-01 10:00:00", "2024-01-01 10:05:00", "2024-01-03 00:00:00"
T8D = "2024-01-09 10:00:00"  # item 10's first events are 8 days old: out of 7d, in 30d
T401D = "2025-02-05 10:00:00"  # user 2's only event is 401 days old: past the 365 d TTL


def seconds(text: str) -> int:
    return int(ts(text).timestamp())


@pytest.fixture
def leakage_dataset(tmp_path):
    folder = write_dataset(
        tmp_path / "leak",
        # User 1 is 17 until T1 (users_history below), item 13 a drama until T2: a training
        # row sees the version in force at its time, the one starting then included.
        users=[{**user(1, age=30), "valid_from": ts(T1)}, user(2, age=17), user(3, age=60)],
        items=[
            item(10, ["Drama"]),
            item(11, ["Comedy"]),
            item(12, ["Drama", "Comedy"]),
            {**item(13, ["Action"]), "valid_from": ts(T2)},
        ],
        interactions=[
            event(1, 10, T0, 5.0),
            event(1, 11, T0, 1.0),  # same second as the row above: neither sees the other
            event(2, 10, T0, 2.0),
            event(1, 12, T1, 3.0),
            event(1, 13, T2, 4.0),
            event(3, 10, T8D, 4.0),
            event(2, 11, T401D, 4.0),
        ],
    )
    for name, row in (("users", user(1, age=17)), ("items", item(13, ["Drama"]))):
        past = pa.Table.from_pylist([{**row, "valid_from": EPOCH}], schema=TABLES[name])
        pq.write_table(past, folder / f"{name}_history.parquet")
    return folder


@pytest.fixture
def built(settings_for, leakage_dataset):
    settings = settings_for(leakage_dataset, val_start=ts(T2), test_start=ts(T8D))
    paths = settings.paths
    ingest(settings)
    manifest = build_features(paths.dataset, paths.features, paths.data_dir, recent_items=3)
    store = feast_store.apply(paths)
    summary = build_training_set(settings, store)
    rows = pd.read_parquet(summary.path)
    return settings, store, manifest, rows.set_index(["user_id", "item_id"])


def test_training_rows_see_only_strictly_earlier_events(built):
    _, _, manifest, rows = built
    assert manifest.genres == ["Action", "Comedy", "Drama"]
    # At T0 nothing is known: the same-second join would give 2 for user 1 and for item 10.
    for key in [(1, 10), (1, 11), (2, 10)]:
        assert pd.isna(rows.loc[key, "user_interaction_count"]), key
        assert pd.isna(rows.loc[key, "item_interaction_count"]), key
    # At T1 user 1 has the two T0 events; a future join would give 4, a same-second join 3.
    r = rows.loc[(1, 12)]
    assert r.user_interaction_count == 2
    assert r.user_mean_rating == pytest.approx(3.0)
    assert list(r.recent_item_ids) == [11, 10]
    # The same list's ratings and times (whole epoch seconds): only the T0 events.
    assert list(r.recent_item_ratings) == [1.0, 5.0]
    assert list(r.recent_item_timestamps) == [seconds(T0)] * 2
    assert list(r.user_genre_affinity) == pytest.approx([0.0, 0.5, 0.5])
    r = rows.loc[(1, 13)]
    assert r.user_interaction_count == 3
    assert list(r.recent_item_ids) == [12, 11, 10]
    assert list(r.recent_item_ratings) == [3.0, 1.0, 5.0]
    assert list(r.recent_item_timestamps) == [seconds(T1), seconds(T0), seconds(T0)]
    assert list(r.user_genre_affinity) == pytest.approx([0.0, 2 / 3, 2 / 3])
    # Item 10 eight days later: both T0 events in the 30-day window, none in the 7-day one.
    r = rows.loc[(3, 10)]
    assert (r.item_interaction_count, r.item_count_7d, r.item_count_30d) == (2, 0, 2)
    assert r.item_mean_rating == pytest.approx(3.5)
    # 401 days after user 2's only event: the 365 d TTL has expired for user and item.
    r = rows.loc[(2, 11)]
    assert pd.isna(r.user_interaction_count) and pd.isna(r.item_interaction_count)


def test_static_features_and_split(built):
    _, _, _, rows = built
    assert rows.loc[(1, 10), "age_bucket"] == "<18"  # T0: the version before T1
    assert rows.loc[(1, 12), "age_bucket"] == "25-34"  # T1: the version from T1
    assert rows.loc[(2, 10), "age_bucket"] == "<18"
    assert rows.loc[(3, 10), "age_bucket"] == "56+"
    assert rows.loc[(1, 12), "zip_prefix"] == "100"
    assert rows.loc[(1, 12), "zip_region"] == "1"
    assert list(rows.loc[(1, 12), "item_genres"]) == ["Drama", "Comedy"]
    assert list(rows.loc[(1, 13), "item_genres"]) == ["Action"]  # T2: the version from T2
    assert rows["split"].value_counts().to_dict() == {"train": 4, "val": 1, "test": 2}
    assert set(rows.loc[rows.split == "test"].index) == {(3, 10), (2, 11)}


def test_online_store_holds_latest_values_as_of(built):
    settings, store, _, _ = built
    feast_store.materialize(settings.paths, end=ts("2025-03-01 00:00:00"), store=store)
    online = store.get_online_features(
        features=store.get_feature_service("user_tower_serving_v1"),
        entity_rows=[{"user_id": 1}, {"user_id": 99}],
    ).to_dict()
    assert online["user_interaction_count"] == [4, None]
    assert online["recent_item_ids"][0] == [13, 12, 11]
    assert online["recent_item_ratings"][0] == [4.0, 3.0, 1.0]
    assert online["recent_item_timestamps"][0] == [seconds(T2), seconds(T1), seconds(T0)]
    assert online["age_bucket"] == ["25-34", None]


def test_feast_equals_independent_reference(built):
    settings, store, _, rows = built
    entity = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    views = store.get_feature_service("two_tower_training_v1").feature_view_projections
    reference = pit_join(entity, [store.get_feature_view(p.name) for p in views])
    ours = rows.reset_index().drop(columns="split")[reference.columns]
    key = ["event_timestamp", "user_id", "item_id"]
    pd.testing.assert_frame_equal(comparable(ours, key), comparable(reference, key))


# --- The join itself, on hand-built feature tables --------------------------------------

T = ts("2024-06-01 00:00:00")
C1, C2 = ts("2024-06-02 00:00:00"), ts("2024-06-03 00:00:00")  # created times: C2 is later


def _activity(user_id, when, created, count):
    return {
        "user_id": user_id,
        "event_timestamp": when,
        "created_timestamp": created,
        "user_interaction_count": count,
        "user_mean_rating": 1.0,
        "user_genre_affinity": [1.0],
        "recent_item_ids": [1],
        "recent_item_ratings": [1.0],
        "recent_item_timestamps": [0],
    }


def _write_views(features_dir):
    features_dir.mkdir(parents=True)
    activity = [
        # User 1: the tie at T is written later-created first, user 3 the other way round,
        # so any pick by file position is wrong for one of them.
        _activity(1, T, C2, 20),
        _activity(1, T, C1, 10),
        _activity(3, T, C1, 10),
        _activity(3, T, C2, 20),
        _activity(1, T + timedelta(days=10), C1, 30),  # future for rows before T + 10 d
        _activity(2, T, C1, 7),  # expires after 365 days
    ]
    pq.write_table(pa.Table.from_pylist(activity), features_dir / "user_activity.parquet")
    static = {"event_timestamp": EPOCH, "created_timestamp": C1}
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "user_id": 1,
                    "age_bucket": "25-34",
                    "gender": "F",
                    "occupation": "x",
                    "zip_prefix": "100",
                    "zip_region": "1",
                    **static,
                }
            ]
        ),
        features_dir / "user_profile.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist(
            [{"item_id": 1, "item_genres": ["Drama"], "item_release_year": 2000, **static}]
        ),
        features_dir / "item_content.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "item_id": 1,
                    "item_interaction_count": 1,
                    "item_mean_rating": 1.0,
                    "item_count_7d": 1,
                    "item_count_30d": 1,
                    **static,
                }
            ]
        ),
        features_dir / "item_popularity.parquet",
    )


# (user, time) → the correct count, and what each wrong join would give instead.
JOIN_CASES = [
    # user, entity time,             right, future, tie-first/last, ttl ignored
    (1, T + timedelta(days=5), 20, 30, 10, 20),
    (3, T + timedelta(days=5), 20, 20, 10, 20),
    (1, T, 20, 30, 10, 20),
    (1, T - timedelta(microseconds=1), None, 30, None, None),
    (2, T + timedelta(days=364), 7, 7, 7, 7),
    (2, T + timedelta(days=366), None, 7, None, 7),
]


@pytest.mark.parametrize("offline_store", ["recsys.offline_store.DuckDBAsofOfflineStore", "duckdb"])
def test_join_picks_latest_created_before_time_within_ttl(settings_for, tmp_path, offline_store):
    """The project's store and Feast's stock store give the right answer in every case, and
    so do the raw ASOF SQL and the pandas reference."""
    settings = settings_for(tmp_path)
    _write_views(settings.paths.features)
    feast_store.apply(settings.paths)
    store = feast_store.feature_store(settings.paths, {"type": offline_store})
    entity = pd.DataFrame(
        {
            "user_id": [c[0] for c in JOIN_CASES],
            "item_id": 1,
            "event_timestamp": [c[1] for c in JOIN_CASES],
        }
    )
    views = [
        store.get_feature_view(n)
        for n in ("user_profile", "user_activity", "item_content", "item_popularity")
    ]
    con = prepare(connect())
    con.register("entity", entity)
    answers = {
        "feast": historical_features(store, entity).to_pandas(),
        "asof sql": con.sql(asof_join_sql("SELECT * FROM entity", view_specs(views))).df(),
        "asof sql, tie-break where needed": con.sql(
            asof_join_sql(
                "SELECT * FROM entity", without_needless_tiebreaks(con, view_specs(views))
            )
        ).df(),
        "pandas": pit_join(entity, views),
        "window sql": con.sql(window_join_sql("SELECT * FROM entity", views)).df(),
    }
    for name, frame in answers.items():
        got = frame.set_index(["user_id", "event_timestamp"])["user_interaction_count"]
        for user_id, when, right, *_ in JOIN_CASES:
            answer = got.loc[(user_id, when)]
            assert (None if pd.isna(answer) else answer) == right, (name, user_id, when)
    # Which views the SQL joins narrow (lists fetched late) and which need the tie-break.
    specs = {s.name: s for s in without_needless_tiebreaks(con, view_specs(views))}
    assert [n for n, s in specs.items() if s.late_path] == ["user_activity", "item_content"]
    assert [n for n, s in specs.items() if s.ties] == ["user_activity"]
    # The fixture discriminates: every wrong join differs from the right one somewhere.
    for k in range(3):
        assert any(case[3 + k] != case[2] for case in JOIN_CASES)
