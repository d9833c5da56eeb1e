"""Serving's Python versions of the pipeline's features and encoding, against the originals:
profile features against the DuckDB SQL on every user, cold-start activity features
against Feast's online rows, the one-row encoder against ``FeatureEncoder.encode_users``,
the seen-items map against pandas; and a version that fails to load is never served."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.features.catalog import CATALOG
from recsys.features.online import (
    USER_SCHEMA,
    Interaction,
    ItemGenres,
    cold_start_row,
    newest_first,
)
from recsys.features.ops import epoch_seconds
from recsys.features.render import static_sql
from recsys.features.row_encoding import RowEncoder
from recsys.registry import ModelRegistry
from recsys.schema import TABLES
from recsys.settings import Paths, Settings
from recsys.sql import connect
from serving.load import load_version
from serving.loaded import SeenItems, VersionLoadError
from serving.metrics import Metrics
from serving.settings import ServingSettings
from serving.state import ServingState
from serving.tower import ONNX_ATOL
from tests.serving.conftest import Pipeline
from towers.checkpoint import load_checkpoint
from towers.data import tensors


def sql_profiles(dataset: Path) -> pd.DataFrame:
    sql = static_sql(CATALOG.view("user_profile"), dataset, datetime.now(UTC))
    return (
        connect().execute(f"SELECT user_id, age_bucket, zip_prefix, zip_region FROM ({sql})").df()
    )


def age_bucket(age: int | None) -> str | None:
    """The Python side of the age_bucket feature's op."""
    return CATALOG.feature("age_bucket").op.py({"age": age})


def zip_feature(name: str, zip_code: str | None) -> str | None:
    """The Python side of a zip-code feature's op (zip_prefix, zip_region)."""
    return CATALOG.feature(name).op.py({"zip_code": zip_code})


def none_if_na(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def test_profile_features_equal_the_sql_on_every_user(pipeline: Pipeline) -> None:
    dataset = pipeline.data / "dataset"
    users = pd.read_parquet(dataset / "users.parquet")
    sql = sql_profiles(dataset).set_index("user_id").loc[users.user_id]
    assert len(users) > 100
    for user, sql_row in zip(users.itertuples(), sql.itertuples(), strict=True):
        age = None if pd.isna(user.age) else int(user.age)
        assert age_bucket(age) == none_if_na(sql_row.age_bucket), user
        assert zip_feature("zip_prefix", user.zip_code) == none_if_na(sql_row.zip_prefix), user
        assert zip_feature("zip_region", user.zip_code) == none_if_na(sql_row.zip_region), user


def test_profile_features_equal_the_sql_on_edge_cases(tmp_path: Path) -> None:
    ages: list[int | None] = [None, -1, 0, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 99]
    zips: list[str | None] = [None, "", "1", "12", "123", "12345", "ñandú", "😀12",
                              "e\u0301xyz", "🇫🇷🇩🇪x"]  # fmt: skip
    rows = [
        {"user_id": n, "age": ages[n % len(ages)], "gender": "F", "occupation": "x",
         "zip_code": zips[n % len(zips)]}
        for n in range(len(ages) * len(zips))
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["users"]), tmp_path / "users.parquet")
    sql = sql_profiles(tmp_path).set_index("user_id")
    for row in rows:
        assert age_bucket(row["age"]) == none_if_na(sql.loc[row["user_id"], "age_bucket"]), row
        for name in ("zip_prefix", "zip_region"):
            assert zip_feature(name, row["zip_code"]) == none_if_na(sql.loc[row["user_id"], name])


@pytest.fixture(scope="module")
def online(pipeline: Pipeline) -> tuple[list[int], dict[str, list[Any]], pd.DataFrame]:
    """Every user's Feast online row (user_tower_serving_v1), plus an unknown user."""
    from recsys.store import feature_store_for

    store = feature_store_for(Settings(data_dir=pipeline.data))
    users = sorted(pd.read_parquet(pipeline.data / "dataset" / "users.parquet").user_id)
    users.append(987_654_321)
    response = store.get_online_features(
        features=store.get_feature_service("user_tower_serving_v1"),
        entity_rows=[{"user_id": u} for u in users],
    )
    return users, response.to_dict(), response.to_df()


def test_cold_start_features_equal_the_online_features_of_the_same_history(
    pipeline: Pipeline, online: tuple[list[int], dict[str, list[Any]], pd.DataFrame]
) -> None:
    """A stored user's profile and full history with their ratings, through the cold-start
    path, give the columns Feast serves for that user: given newest first without times
    (within one timestamp, item ids descending, as the SQL lists them), or with their times
    in the opposite order (the times order them). Without the ratings, no mean rating."""
    users, values, _ = online
    manifest = json.loads((pipeline.data / "features" / "manifest.json").read_text())
    genres = ItemGenres.from_items(pipeline.data / "dataset" / "items.parquet", manifest["genres"])
    profiles = pd.read_parquet(pipeline.data / "dataset" / "users.parquet").set_index("user_id")
    events = pipeline.interactions()
    events = events[events.event_timestamp < pd.Timestamp(manifest["as_of"])]
    assert events.event_timestamp.dt.tz is not None
    # Oldest first, ties by item id descending: sorted by time, newest first, ties kept.
    events = events.sort_values(["event_timestamp", "item_id"], ascending=[True, False])
    timed: dict[int, list[Interaction]] = {}
    for e in events.itertuples():
        rating = None if pd.isna(e.rating) else float(e.rating)
        timed.setdefault(int(e.user_id), []).append(
            Interaction(int(e.item_id), rating, e.event_timestamp.to_pydatetime())
        )
    now = datetime(2030, 1, 1, 12, 0, 0, 999_999, tzinfo=UTC)
    compared = mean_ratings = 0
    for position, user in enumerate(users[:-1]):
        stored = {name: column[position] for name, column in values.items()}
        if stored["user_interaction_count"] is None:  # no activity online (none before as_of)
            assert user not in timed
            continue
        profile = profiles.loc[user]
        in_sql_order = sorted(timed[user], key=lambda i: (i.timestamp, i.item_id), reverse=True)
        untimed = [Interaction(i.item_id, i.rating) for i in in_sql_order]
        for recent in (untimed, timed[user]):
            row = cold_start_row(
                age=int(profile.age), gender=profile.gender, occupation=profile.occupation,
                zip_code=profile.zip_code, recent=recent, item_genres=genres,
                recent_items=manifest["recent_items"], now=now,
            )  # fmt: skip
            for name in ("age_bucket", "gender", "occupation", "zip_prefix", "zip_region",
                         "user_interaction_count", "recent_item_ids"):  # fmt: skip
                assert row[name] == stored[name], (user, name)
            # NaN for unrated items on both sides (assert_array_equal: NaN equals NaN).
            np.testing.assert_array_equal(row["recent_item_ratings"],
                                          stored["recent_item_ratings"])  # fmt: skip
            if recent is untimed:  # no times given: the request's, to the second
                want_times = [epoch_seconds(now)] * len(stored["recent_item_ids"])
                assert row["recent_item_timestamps"] == want_times, user
            else:
                assert row["recent_item_timestamps"] == stored["recent_item_timestamps"], user
            np.testing.assert_array_equal(
                np.float32(row["user_genre_affinity"]), np.float32(stored["user_genre_affinity"])
            )
            if stored["user_mean_rating"] is None:
                assert row["user_mean_rating"] is None, user
            else:
                want = pytest.approx(stored["user_mean_rating"], rel=1e-12)
                assert row["user_mean_rating"] == want
        mean_ratings += stored["user_mean_rating"] is not None
        unrated = [Interaction(i.item_id, None, i.timestamp) for i in timed[user]]
        assert cold_start_row(age=None, gender=None, occupation=None, zip_code=None,
                              recent=unrated, item_genres=genres,
                              recent_items=20)["user_mean_rating"] is None  # fmt: skip
        compared += 1
    assert compared > 100 and mean_ratings > 100


def test_interactions_are_ordered_by_time_then_as_given() -> None:
    """Timed interactions newest first (equal times in the order given, whatever their
    offsets), then the untimed ones as given."""
    utc, plus2 = UTC, timezone(timedelta(hours=2))
    noon = datetime(2024, 5, 1, 12, tzinfo=utc)
    given = [
        Interaction(1),
        Interaction(2, 4.0, noon),
        Interaction(3),
        Interaction(4, None, datetime(2024, 5, 1, 14, tzinfo=plus2)),  # = noon UTC
        Interaction(5, 2.0, noon + timedelta(microseconds=1)),
        Interaction(6, None, datetime(1, 1, 1, tzinfo=utc)),
    ]
    assert [i.item_id for i in newest_first(given)] == [5, 2, 4, 6, 1, 3]
    assert newest_first([]) == [] and newest_first(given[:1]) == given[:1]
    genres = ItemGenres(np.array([1], dtype=np.int64), np.ones((1, 2), np.uint8), ("a", "b"))
    row = cold_start_row(age=None, gender=None, occupation=None, zip_code=None, recent=given,
                         item_genres=genres, recent_items=4)  # fmt: skip
    assert row["recent_item_ids"] == [5, 2, 4, 6] and row["user_interaction_count"] == 6
    assert row["user_mean_rating"] == 3.0  # the two rated ones
    np.testing.assert_array_equal(row["recent_item_ratings"], [2.0, 4.0, np.nan, np.nan])
    second = int(noon.timestamp())
    # Floored to the second (item 5 is 1 µs past noon; item 6 is in the year 1).
    assert row["recent_item_timestamps"][:3] == [second, second, second]
    assert row["recent_item_timestamps"][3] == -62135596800
    late = cold_start_row(age=None, gender=None, occupation=None, zip_code=None,
                          recent=[Interaction(1), Interaction(2, None, noon)],
                          item_genres=genres, recent_items=4,
                          now=noon + timedelta(hours=1))  # fmt: skip
    assert late["recent_item_timestamps"] == [second, second + 3600]  # untimed: now


def test_no_history_means_no_activity_features() -> None:
    genres = ItemGenres(np.array([1], dtype=np.int64), np.ones((1, 2), np.uint8), ("a", "b"))
    row = cold_start_row(age=None, gender=None, occupation=None, zip_code=None,
                         recent=[], item_genres=genres, recent_items=20)  # fmt: skip
    assert all(value is None for value in row.values())
    # An unknown item counts as an interaction with no genre (the SQL's LEFT JOIN).
    row = cold_start_row(age=None, gender=None, occupation=None, zip_code=None,
                         recent=[Interaction(1), Interaction(99), Interaction(1)],
                         item_genres=genres, recent_items=2)  # fmt: skip
    assert row["user_interaction_count"] == 3 and row["recent_item_ids"] == [1, 99]
    assert row["user_genre_affinity"] == [np.float32(2 / 3)] * 2


def assert_same_arrays(fast: dict[str, np.ndarray], batch: dict[str, np.ndarray], i: int):
    assert fast.keys() == batch.keys()
    for name, array in fast.items():
        assert array.dtype == batch[name].dtype, name
        assert np.array_equal(array[0], batch[name][i]), (name, array[0], batch[name][i])


def test_row_encoder_equals_encode_users_on_every_online_row(
    pipeline: Pipeline, online: tuple[list[int], dict[str, list[Any]], pd.DataFrame]
) -> None:
    users, values, frame = online
    version = ModelRegistry(pipeline.data / "models").current()
    assert version is not None
    _, encoder, _ = load_checkpoint(pipeline.data / "models" / "versions" / version /
                                    "checkpoint.pt")  # fmt: skip
    now = (
        pd.Timestamp(
            json.loads((pipeline.data / "features" / "manifest.json").read_text())["as_of"]
        ).timestamp()
        + 86_400.5
    )  # a request a day after as_of
    batch = encoder.encode_users(frame, now)  # the pandas frame Feast returns, as in training
    assert np.abs(batch["history_feats"][..., 0]).sum() > 0  # ratings and times are encoded
    assert np.abs(batch["history_feats"][..., 2]).sum() > 0
    rows = RowEncoder(encoder)
    loaded = load_version(Paths(pipeline.data), version)
    assert loaded.tower_kind == "onnx"  # the pipeline exported the version's user tower
    for i, user in enumerate(users):
        row = {name: column[i] for name, column in values.items()}
        fast = rows.arrays(user, row, now)
        assert_same_arrays(fast, batch, i)
        # The user tower serving runs (ONNX Runtime) gives the checkpoint's vectors.
        with torch.no_grad():
            want = loaded.model.user_tower(tensors(fast)).numpy()
        np.testing.assert_allclose(loaded.tower(fast), want, rtol=0, atol=ONNX_ATOL)
    assert rows.knows(users[0]) and not rows.knows(users[-1])

    # Cold-start rows (no user id: the unknown slot), as an Arrow table of Feast's types.
    genres = ItemGenres.from_items(pipeline.data / "dataset" / "items.parquet", encoder.genres)
    items = pipeline.items().item_id.tolist()
    when = datetime.fromtimestamp(now, UTC)
    cold = [
        cold_start_row(age=a, gender=g, occupation=o, zip_code=z,
                       recent=[Interaction(i, 1.0 + k % 5 if k % 3 else None,
                                           when - timedelta(hours=k * k) if k % 4 else None)
                               for k, i in enumerate(r)],
                       item_genres=genres, recent_items=20, now=when)
        for a, g, o, z, r in [
            (None, None, None, None, []), (25, "F", "engineer", "94110", items[:3]),
            (70, "M", "no-such-job", "", items[::-1][:40] + [987_654_321]),
            (12, "X", None, "😀", [items[5]] * 3),
        ]
    ]  # fmt: skip
    table = pa.Table.from_pylist([{"user_id": -1, **row} for row in cold], schema=USER_SCHEMA)
    batch = encoder.encode_users(table, now)
    for i, row in enumerate(cold):
        assert_same_arrays(rows.arrays(None, row, now), batch, i)


def test_seen_items_group_every_interaction_before_as_of(pipeline: Pipeline) -> None:
    manifest = json.loads((pipeline.data / "features" / "manifest.json").read_text())
    as_of = pd.Timestamp(manifest["as_of"])
    seen = SeenItems.from_parquet(pipeline.data / "dataset" / "interactions.parquet", as_of)
    events = pipeline.interactions()
    before = events[events.event_timestamp < as_of]
    want = before.groupby("user_id").item_id.agg(lambda s: sorted(set(s)))
    assert seen.users.tolist() == want.index.tolist()
    for user, items in want.items():
        assert seen.get(int(user)).tolist() == items
    assert seen.get(987_654_321).size == 0 and seen.get(-(2**63)).size == 0
    dupes = SeenItems.from_arrays(np.array([2, 1, 2, 2]), np.array([5, 7, 5, 3]))
    assert dupes.get(2).tolist() == [3, 5] and dupes.get(1).tolist() == [7]
    assert SeenItems.from_arrays(np.array([]), np.array([])).get(1).size == 0


def test_a_version_that_fails_to_load_is_never_served(pipeline: Pipeline, tmp_path: Path) -> None:
    data = tmp_path / "data"  # a copy: promoting a broken version must not disturb the server
    shutil.copytree(pipeline.data, data, symlinks=True)
    settings = ServingSettings(data_dir=data, retry_failed_seconds=0.01)
    state = ServingState(settings, Metrics())
    state.open_store()
    served = state.refresh()
    assert served is not None and served.version == pipeline.version
    assert state.readiness()[0]

    registry = ModelRegistry(data / "models")
    broken = "29990101T000000000000-nolance0"  # a complete folder, but no item table
    copy_version(registry, pipeline.version, broken, "embedded")
    registry.promote(broken, "test")
    assert state.refresh() is served  # still the old, consistent version
    ready, body = state.readiness()
    assert not ready and broken in body["reason"] and "item table" in body["error"]
    assert body["model_version"] == pipeline.version
    with pytest.raises(VersionLoadError, match="item table"):
        load_version(state.paths, broken)

    registry.rollback(pipeline.version, "test", "the promoted version cannot be served")
    assert state.refresh() is served and state.readiness()[0]
    rejected = "29990101T000000000001-rejected"
    copy_version(registry, pipeline.version, rejected, "rejected")
    with pytest.raises(VersionLoadError, match="quality gate"):
        load_version(state.paths, rejected)


def copy_version(registry: ModelRegistry, source: str, version: str, state: str) -> None:
    """``source``'s files as a new version built by run "test", moved to ``state``
    ("embedded": ready for promotion, or "rejected")."""
    with registry.build(version, "test", {"fingerprint": version}) as folder:
        for path in registry.path(source).iterdir():
            if path.name != "version.json":
                shutil.copy(path, folder / path.name)
    moves = ["gated", "embedded"] if state == "embedded" else [state]
    for to in moves:
        registry.transition(version, to, "test", f"serving tests: a copy of {source}")


def copy_data(pipeline: Pipeline, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(pipeline.data, data, symlinks=True)
    return data


def test_ann_search_serves_users_with_long_histories(pipeline: Pipeline, tmp_path: Path) -> None:
    """LanceDB mode on an IVF_HNSW_SQ table, with exclusion lists as long as the catalogue
    (over-fetching k + excluded rows must fit the index's search breadth)."""
    from recsys.index.search import ItemIndex
    from recsys.index.table import write_item_table
    from recsys.settings import Paths

    data = copy_data(pipeline, tmp_path)
    registry = ModelRegistry(data / "models")
    real = ItemIndex.open(data / "lancedb", pipeline.version, mode="matrix")
    version = "29990101T000000000000-annindex"
    shutil.copytree(registry.path(pipeline.version), registry.versions_dir / version)
    titles = pa.table({"title": [a["title"] for a in real.attributes(real.item_ids)]})
    write_item_table(data / "lancedb", version, real.item_ids, real.vectors, titles,
                     ann_min_rows=0)  # fmt: skip
    ann = load_version(Paths(data), version, "lance")
    exact = load_version(Paths(data), version, "matrix")
    assert (ann.index.mode, ann.index.index_type) == ("lance", "IVF_HNSW_SQ")
    items = real.item_ids.tolist()
    for history in (items[:3], items[: len(items) - 30], items[::-1][:1000]):
        row = ann.cold_row(age=30, gender="F", occupation=None, zip_code="123",
                           recent=[Interaction(i) for i in history])  # fmt: skip
        exclude = np.unique(history)
        got = ann.recommend(None, row, 20, exclude)
        want = exact.recommend(None, row, 20, exclude)
        assert not {i["item_id"] for i in got} & set(history)
        overlap = {i["item_id"] for i in got} & {i["item_id"] for i in want}
        assert len(got) == len(want) and len(overlap) >= 0.9 * len(want)


def test_a_republished_dataset_reloads_the_seen_items(pipeline: Pipeline, tmp_path: Path) -> None:
    """A feature refresh publishes a new dataset folder: the same version is reloaded with
    the new interactions in its seen-items map."""
    from recsys.io import publish_dir, staging_dir

    data = copy_data(pipeline, tmp_path)
    state = ServingState(ServingSettings(data_dir=data), Metrics())
    served = state.refresh()
    assert served is not None
    user = int(served.seen.users[0])
    new_item = next(i for i in served.index.item_ids.tolist() if i not in served.seen.get(user))
    events = pq.read_table(data / "dataset" / "interactions.parquet")
    event = {"user_id": user, "item_id": new_item, "rating": 4.0,
             "event_timestamp": served.as_of - timedelta(seconds=1)}  # fmt: skip
    added = pa.concat_tables([events, pa.Table.from_pylist([event], schema=events.schema)])
    with staging_dir(data, "dataset") as stage:
        shutil.copytree(data / "dataset", stage, dirs_exist_ok=True)
        pq.write_table(added, stage / "interactions.parquet")
        publish_dir(stage, data / "dataset")
    reloaded = state.refresh()
    assert reloaded is not None and reloaded is not served
    assert reloaded.version == served.version
    assert new_item in reloaded.seen.get(user) and new_item not in served.seen.get(user)
