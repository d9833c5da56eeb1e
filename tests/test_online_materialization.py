"""Online materialization by change (recsys.materialize): a late event, stamped before the
last materialization's end, reaches the online store; entities whose values did not change
are not rewritten; the stored bytes equal a full ``feast materialize`` into a new store; a
crash between the online write and the snapshot makes the next run write again."""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from recsys import store as feast_store
from recsys.features.build import build_features
from recsys.features.ops import EPOCH
from recsys.ingest import ingest
from recsys.schema import TABLES
from recsys.settings import Paths
from tests.conftest import event, item, ts, user, write_dataset

T_OLD = "2023-01-01 09:00:00"  # user 3 and item 13: past the 365 d TTL at END
T0, T1, T2 = "2024-01-01 10:00:00", "2024-01-02 12:00:00", "2024-01-03 08:00:00"
END = ts("2024-06-01 00:00:00")
USERS, ITEMS = [1, 2, 3], [10, 11, 12, 13]
EVENTS = [event(1, 10, T0, 5.0), event(1, 11, T2, 3.0), event(2, 12, T1, 4.0),
          event(3, 13, T_OLD, 2.0)]  # fmt: skip
# Arrives after the first materialization, stamped before its end (between user 1's events).
LATE = event(1, 12, T1, 1.0)
ACTIVITY = ["user_interaction_count", "user_mean_rating", "user_genre_affinity",
            "recent_item_ids", "recent_item_ratings", "recent_item_timestamps"]  # fmt: skip


def _write(folder: Path, events: list[dict]) -> None:
    items = [item(10, ["Drama"]), item(11, ["Comedy"]), item(12, ["Action"]), item(13)]
    write_dataset(folder, [user(u) for u in USERS], items, events)


def _build(settings) -> None:
    ingest(settings)
    paths = settings.paths
    # Each build stamps its rows with its own created time (whole seconds online): two
    # builds within one second would be indistinguishable to the created-time assertions.
    built_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=next(_BUILDS))
    build_features(paths.dataset, paths.features, paths.data_dir, recent_items=3,
                   built_at=built_at)  # fmt: skip


_BUILDS = itertools.count()


@pytest.fixture
def built(settings_for, tmp_path):
    source = tmp_path / "source"
    _write(source, EVENTS)
    settings = settings_for(source)
    _build(settings)
    store = feast_store.apply(settings.paths)
    return settings, store, source


def _counts(report) -> dict[str, tuple[int, int, bool]]:
    return {v.view: (v.written, v.unchanged, v.full) for v in report.views}


def _online_rows(path: Path) -> dict[str, list[tuple]]:
    """Every stored (entity key, feature, value bytes, event time) of the serving views."""
    con = sqlite3.connect(path)
    rows = {}
    for view in feast_store.SERVING_VIEWS:
        rows[view] = con.execute(
            f'SELECT entity_key, feature_name, value, event_ts FROM "recsys_{view}" '
            "ORDER BY entity_key, feature_name"
        ).fetchall()
    con.close()
    return rows


def _created(path: Path, view: str) -> set:
    """The created times stored for ``view``'s rows (one per write of a built table)."""
    con = sqlite3.connect(path)
    values = {r[0] for r in con.execute(f'SELECT created_ts FROM "recsys_{view}"')}
    con.close()
    return values


def _activity(store, user_ids: list[int]) -> dict[str, list]:
    refs = [f"user_activity:{f}" for f in ACTIVITY]
    rows = [{"user_id": u} for u in user_ids]
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def _add_late_event(settings, source: Path) -> None:
    _write(source, [*EVENTS, LATE])
    _build(settings)


def test_late_event_reaches_the_online_store(built, tmp_path):
    settings, store, source = built
    paths = settings.paths
    first = feast_store.materialize(paths, end=END, store=store)
    assert _counts(first) == {"user_profile": (3, 0, True), "user_activity": (3, 0, True),
                              "item_content": (4, 0, True), "item_popularity": (4, 0, True)}  # fmt: skip
    before = _activity(store, [1])
    assert before["user_interaction_count"] == [2]
    assert before["recent_item_ids"] == [[11, 10]]
    online_db = paths.feast / "online_store.db"
    first_created = _created(online_db, "user_activity")

    _add_late_event(settings, source)
    second = feast_store.materialize(paths, end=END, store=store)
    # Only user 1 and item 12 changed; the rebuild alone (new created timestamps) is no change.
    assert _counts(second) == {"user_profile": (0, 3, False), "user_activity": (1, 2, False),
                               "item_content": (0, 4, False), "item_popularity": (1, 3, False)}  # fmt: skip
    online = _activity(store, [1, 2, 3])
    assert online["user_interaction_count"] == [3, 1, 1]
    assert online["recent_item_ids"][0] == [11, 12, 10]
    assert online["recent_item_ratings"][0] == [3.0, 1.0, 5.0]  # the late event's in place
    assert online["recent_item_timestamps"][0] == [int(ts(t).timestamp()) for t in (T2, T1, T0)]
    assert online["user_mean_rating"][0] == pytest.approx(3.0)
    # Users 2 and 3 kept the rows of the first write (their created time), user 1 has new ones.
    assert len(_created(online_db, "user_activity") - first_created) == 1

    # The online value is the offline value as of END.
    entity = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [END, END]})
    offline = (
        store.get_historical_features(
            entity_df=entity, features=[f"user_activity:{f}" for f in ACTIVITY]
        )
        .to_df()
        .sort_values("user_id")
    )
    for feature in ACTIVITY:
        want = [v.tolist() if hasattr(v, "tolist") else v for v in offline[feature]]
        assert online[feature][:2] == want, feature

    # Byte for byte what a full `feast materialize` writes into a new online store.
    fresh_paths = Paths(tmp_path / "fresh")
    fresh = feast_store.feature_store(fresh_paths)
    fresh.apply(feast_store.feast_objects(paths))
    fresh.materialize(start_date=EPOCH, end_date=END, feature_views=feast_store.SERVING_VIEWS)
    ours, theirs = _online_rows(online_db), _online_rows(fresh_paths.feast / "online_store.db")
    # user_profile: 3 users x 5 features (age bucket, gender, occupation, zip prefix, zip region).
    assert {v: len(r) for v, r in ours.items()} == {
        "user_profile": 15, "user_activity": 18, "item_content": 8, "item_popularity": 16}  # fmt: skip
    assert ours == theirs
    for service in ("user_tower_serving_v1", "item_tower_v1"):
        rows = [{"user_id": u} for u in USERS] if service.startswith("user") else \
            [{"item_id": i} for i in ITEMS]  # fmt: skip
        features = store.get_feature_service(service)
        got = store.get_online_features(features=features, entity_rows=rows).to_dict()
        want = fresh.get_online_features(features=features, entity_rows=rows).to_dict()
        assert got == want, service


def test_a_crash_before_the_snapshot_means_a_rewrite_not_a_skip(built, monkeypatch):
    from recsys import materialize

    settings, store, source = built
    paths = settings.paths
    feast_store.materialize(paths, end=END, store=store)
    _add_late_event(settings, source)

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the online write and the snapshot")

    monkeypatch.setattr(materialize, "_write_snapshot", crash)
    with pytest.raises(RuntimeError, match="killed"):
        feast_store.materialize(paths, end=END, store=store)
    monkeypatch.undo()
    again = feast_store.materialize(paths, end=END, store=store)
    assert _counts(again)["user_activity"] == (1, 2, False)
    assert _activity(store, [1])["user_interaction_count"] == [3]


def test_a_failed_online_write_is_retried(built, monkeypatch):
    from recsys import materialize

    settings, store, source = built
    paths = settings.paths
    feast_store.materialize(paths, end=END, store=store)
    _add_late_event(settings, source)

    def fail(*args, **kwargs):
        raise OSError("online store unavailable")

    monkeypatch.setattr(materialize, "write_online", fail)
    with pytest.raises(OSError, match="unavailable"):
        feast_store.materialize(paths, end=END, store=store)
    monkeypatch.undo()
    assert _activity(store, [1])["user_interaction_count"] == [2]  # nothing written yet
    again = feast_store.materialize(paths, end=END, store=store)
    assert _counts(again)["user_activity"] == (1, 2, False)
    assert _activity(store, [1])["user_interaction_count"] == [3]


def test_a_recreated_online_store_is_written_in_full(built):
    settings, store, _ = built
    paths = settings.paths
    feast_store.materialize(paths, end=END, store=store)
    (paths.feast / "online_store.db").unlink()
    store = feast_store.apply(paths)  # creates the online tables again, empty
    again = feast_store.materialize(paths, end=END, store=store)
    assert _counts(again) == {"user_profile": (3, 0, True), "user_activity": (3, 0, True),
                              "item_content": (4, 0, True), "item_popularity": (4, 0, True)}  # fmt: skip
    assert _activity(store, [1, 2])["user_interaction_count"] == [2, 1]


def test_online_features_asset_writes_the_late_event(tmp_path):
    """Tier 2: the Dagster slice incoming batch → dataset → features → feast apply → online
    store, run twice; the second time a batch brings the late event."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dagster import materialize

    from orchestration.assets import ASSETS
    from orchestration.resources import PipelineSettings, resources_for
    from recsys.store import feature_store

    source, data = tmp_path / "source", tmp_path / "data"
    _write(source, EVENTS)
    resources = resources_for(PipelineSettings(data_dir=str(data), dataset=str(source)))
    selection = ["incoming_batch", "dataset", "features", "feast_registry", "online_features"]

    def run() -> dict:
        result = materialize(ASSETS, resources=resources, selection=selection)
        assert result.success
        (event,) = result.asset_materializations_for_node("online_features")
        return {k: v.value for k, v in event.metadata.items()}

    first = run()
    assert (first["entities_written"], first["entities_unchanged"]) == (14, 0)
    (data / "incoming").mkdir(exist_ok=True)
    # User 2 this time: the dataset check caps one user's share of the events at a half.
    late = event(2, 11, "2024-01-02 18:00:00", 2.0)
    pq.write_table(pa.Table.from_pylist([late], schema=TABLES["interactions"]),
                   data / "incoming" / "late.parquet")  # fmt: skip
    second = run()
    assert (second["entities_written"], second["entities_unchanged"]) == (2, 12)
    assert (second["user_activity_written"], second["item_popularity_written"]) == (1, 1)
    assert second["full_writes"] == []
    online = _activity(feature_store(Paths(data)), [1, 2])
    assert online["user_interaction_count"] == [2, 2]
    assert online["recent_item_ids"] == [[11, 10], [11, 12]]


def test_a_snapshot_unlike_the_view_is_ignored(built):
    import pyarrow.parquet as pq

    settings, store, _ = built
    paths = settings.paths
    feast_store.materialize(paths, end=END, store=store)
    snapshot = paths.online_snapshot / "user_activity.parquet"
    pq.write_table(pq.read_table(snapshot).drop_columns(["recent_item_ids"]), snapshot)
    again = feast_store.materialize(paths, end=END, store=store)
    assert _counts(again)["user_activity"] == (3, 0, True)
    assert _counts(again)["user_profile"] == (0, 3, False)
    assert pq.read_schema(snapshot).names[-2:] == ["recent_item_timestamps", "event_timestamp"]
