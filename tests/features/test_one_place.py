"""A feature declared once reaches every consumer of the catalogue: a new event feature and
a new static one, added to the catalogue only, appear in the feature tables, the Feast views
and services, the point-in-time training set, the online store after materialization and
the cold-start row, each with the value its op defines, and the towers' inputs: an encoder
fitted on the training set encodes both, from a batch and from one request's row alike."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import store as feast_store
from recsys.features import catalog
from recsys.features.build import compute_features
from recsys.features.encoding import FeatureEncoder
from recsys.features.online import Interaction, ItemGenres, cold_start_row
from recsys.features.ops import Count, Prefix
from recsys.features.row_encoding import RowEncoder
from recsys.features.spec import Catalog, Encoding, Feature
from recsys.settings import Paths
from recsys.training_set import entity_rows, historical_features

RATED = Feature("user_rated_count", "int64", Count(rated=True), Encoding.LOG_NUMERIC)
AREA = Feature("zip_area", "string", Prefix("zip_code", 2), Encoding.CATEGORICAL)


def extended(base: Catalog) -> Catalog:
    """``base`` with RATED in user_activity and AREA in user_profile."""
    added = {"user_activity": RATED, "user_profile": AREA}
    views = tuple(
        dataclasses.replace(v, features=(*v.features, added[v.name])) if v.name in added else v
        for v in base.views
    )
    return dataclasses.replace(base, views=views)


def test_a_feature_declared_once_reaches_every_consumer(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = extended(catalog.CATALOG)
    # The Feast definitions read the catalogue when they are evaluated (recsys.store).
    monkeypatch.setattr(catalog, "CATALOG", cat)
    paths = Paths(tmp_path / "data")
    paths.features.mkdir(parents=True)
    manifest = compute_features(dataset, paths.features, catalog=cat)
    events = pq.read_table(dataset / "interactions.parquet").to_pylist()
    users = {u["user_id"]: u for u in pq.read_table(dataset / "users.parquet").to_pylist()}
    rated = Counter(e["user_id"] for e in events if e["rating"] is not None)

    # The tables: each new column, typed as declared.
    assert pq.read_schema(paths.features / "user_activity.parquet").field(RATED.name).type == (
        pa.int64()
    )
    profile = pq.read_table(paths.features / "user_profile.parquet").to_pylist()
    assert {r["user_id"]: r[AREA.name] for r in profile} == {
        u: (None if row["zip_code"] is None else row["zip_code"][:2]) for u, row in users.items()
    }

    # Feast: the views' schema and the services that hold the views.
    store = feast_store.apply(paths)
    for view, feature in (("user_activity", RATED), ("user_profile", AREA)):
        fields = {f.name: f for f in store.get_feature_view(view).features}
        assert fields[feature.name].tags == {"encoding": feature.encoding.value}
        for service in ("two_tower_training_v1", "user_tower_serving_v1"):
            projections = store.get_feature_service(service).feature_view_projections
            names = {f.name for p in projections if p.name == view for f in p.features}
            assert feature.name in names, (service, view)

    # The point-in-time training set: events strictly before each row's time.
    rows = entity_rows(dataset, manifest.as_of)
    training_table = historical_features(store, rows)
    training = training_table.to_pylist()
    assert len(training) == len(events)
    for row in training:
        before = sum(
            e["user_id"] == row["user_id"] and e["rating"] is not None
            and e["event_timestamp"] < row["event_timestamp"]
            for e in events
        )  # fmt: skip
        has_history = any(
            e["user_id"] == row["user_id"] and e["event_timestamp"] < row["event_timestamp"]
            for e in events
        )
        assert row[RATED.name] == (before if has_history else None), row
        zip_code = users[row["user_id"]]["zip_code"]
        assert row[AREA.name] == (None if zip_code is None else zip_code[:2])

    # The online store after materialization, and the cold-start row of the same history.
    feast_store.materialize(paths, end=manifest.as_of, store=store)
    ids = sorted(users)
    online = store.get_online_features(
        features=store.get_feature_service("user_tower_serving_v1"),
        entity_rows=[{"user_id": u} for u in ids],
    ).to_dict()
    genres = ItemGenres.from_items(dataset / "items.parquet", manifest.genres)
    for k, u in enumerate(ids):
        history = [Interaction(e["item_id"], e["rating"], e["event_timestamp"])
                   for e in events if e["user_id"] == u]  # fmt: skip
        want = rated[u] if history else None
        assert online[RATED.name][k] == want, u
        profile_row = users[u]
        cold = cold_start_row(
            age=profile_row["age"], gender=profile_row["gender"],
            occupation=profile_row["occupation"], zip_code=profile_row["zip_code"],
            recent=history, item_genres=genres, recent_items=manifest.recent_items,
            catalog=cat,
        )  # fmt: skip
        assert cold[RATED.name] == want
        assert cold[AREA.name] == online[AREA.name][k]
    assert any(online[RATED.name]) and any(online[AREA.name])

    # The towers: the encoder fitted on the training set has one more categorical and one
    # more numeric input, with the values its encodings define.
    encoder = FeatureEncoder.fit(training_table, manifest.genres, manifest.recent_items,
                                 catalog=cat)  # fmt: skip
    cats, nums = list(encoder.columns.user_cats), [n for n, _ in encoder.columns.user_nums]
    assert AREA.name in cats and RATED.name in nums
    batch = encoder.encode_users(training_table)
    vocabulary = encoder.cats[AREA.name]
    areas = [r[AREA.name] for r in training]
    assert batch["cats"][:, cats.index(AREA.name)].tolist() == [
        0 if v is None else vocabulary.index(v) + 1 for v in areas
    ]
    counts = np.array([np.nan if r[RATED.name] is None else r[RATED.name] for r in training])
    mean, std = encoder.stats[RATED.name]
    k = nums.index(RATED.name)
    np.testing.assert_allclose(
        batch["nums"][:, k], np.where(np.isnan(counts), 0.0, (np.log1p(counts) - mean) / std),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    assert batch["nums"][:, len(nums) + k].tolist() == np.isnan(counts).astype(float).tolist()
    # One request's row (the online store's) encodes as the batch of the same rows does.
    now = manifest.as_of.timestamp()
    frame = pa.Table.from_pydict(
        {"user_id": ids, **{c: online[c] for c in online if c != "user_id"}}
    )
    served = encoder.encode_users(frame.to_pandas(), now)
    one = RowEncoder(encoder)
    for j, u in enumerate(ids):
        row = {c: online[c][j] for c in online}
        arrays = one.arrays(u, row, now)
        for name in ("cats", "nums"):
            assert np.array_equal(arrays[name][0], served[name][j]), (u, name)
