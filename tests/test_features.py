"""Feature tables computed in hash partitions of the entity key equal the single-pass ones."""

from __future__ import annotations

import pandas as pd

from recsys.datasets.synthetic import generate_synthetic
from recsys.features import build as features
from recsys.features.build import compute_features
from tests.pit_reference import comparable


def test_partitioned_build_equals_single_pass(tmp_path, monkeypatch):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    generate_synthetic(dataset, 20_000, seed=3, progress=False)
    built_at = pd.Timestamp("2030-01-01", tz="UTC").to_pydatetime()
    single, split = tmp_path / "single", tmp_path / "split"
    single.mkdir(), split.mkdir()
    compute_features(dataset, single, built_at=built_at)
    monkeypatch.setattr(features, "EVENTS_PER_PART", 6_000)  # 4 partitions
    manifest = compute_features(dataset, split, built_at=built_at)
    assert sorted(p.name for p in split.iterdir()) == sorted(p.name for p in single.iterdir())
    for view in ("user_activity", "item_popularity"):
        a, b = (
            pd.read_parquet(single / f"{view}.parquet"),
            pd.read_parquet(split / f"{view}.parquet"),
        )
        key = [a.columns[0], "event_timestamp"]
        assert len(b) == manifest.rows[view] == len(a) > 1_000
        pd.testing.assert_frame_equal(comparable(a, key), comparable(b, key))
