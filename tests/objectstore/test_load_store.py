"""``serving.load.load_version`` from the artifact store, in process: a fallback version (no
torch) published with the dataset and features it serves with, loaded by a data folder that
holds none of them, answers as the same version loaded from the building folder."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import fallback
from recsys.index.table import write_item_table
from recsys.io import publish_dir, staging_dir
from recsys.objectstore import ArtifactStore
from recsys.registry import EMBEDDED, GATED, ModelRegistry
from recsys.settings import Paths
from serving.load import load_version
from serving.loaded import VersionLoadError

ITEMS = np.arange(1, 31, dtype=np.int64)


def fallback_folder(data: Path) -> tuple[ModelRegistry, str, str]:
    """A data folder with a dataset, a feature manifest and an embedded popularity fallback
    (scores = item id, so the ranking is known); returns (registry, version, run id)."""
    rng = np.random.default_rng(0)
    with staging_dir(data, "dataset") as staging:
        pd.DataFrame({
            "user_id": rng.integers(1, 6, 60), "item_id": rng.choice(ITEMS, 60),
            "event_timestamp": pd.date_range("2024-01-01", periods=60, freq="h", tz="UTC"),
        }).to_parquet(staging / "interactions.parquet")  # fmt: skip
        pq.write_table(pa.table({"item_id": ITEMS, "title": [f"t{i}" for i in ITEMS],
                                 "genres": [["Drama"]] * len(ITEMS)}),
                       staging / "items.parquet")  # fmt: skip
        publish_dir(staging, data / "dataset")
    with staging_dir(data, "features") as staging:
        (staging / "manifest.json").write_text(json.dumps(
            {"as_of": "2024-02-01T00:00:00+00:00", "genres": ["Drama"], "recent_items": 20}))  # fmt: skip
        publish_dir(staging, data / "features")
    reg = ModelRegistry(data / "models")
    run = str(uuid.uuid4())
    version = reg.new_version("fallback")
    info = {"kind": fallback.KIND, "baseline": "popularity", "fingerprint": "f"}
    with reg.build(version, run, info) as folder:
        pq.write_table(pa.table({"item_id": ITEMS, fallback.GLOBAL: ITEMS.astype(float)}),
                       folder / fallback.RANKING)  # fmt: skip
    reg.transition(version, GATED, run, "test")
    vectors = fallback.item_vectors(reg.path(version), ITEMS)
    titles = pa.table({"title": [f"t{i}" for i in ITEMS]})
    write_item_table(data / "lancedb", version, ITEMS, vectors, titles)
    reg.transition(version, EMBEDDED, run, "test")
    return reg, version, run


def test_a_fallback_loads_from_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    data, replica = tmp_path / "data", tmp_path / "replica"
    reg, version, run = fallback_folder(data)
    replica.mkdir()
    with pytest.raises(VersionLoadError, match="not published"):
        load_version(Paths(replica), version, "matrix", store=store)
    store_reg = ModelRegistry(data / "models", store=store)
    store.publish_served_folders(Paths(data))
    store.publish(reg.path(version), data / "lancedb", version)
    store_reg.promote(version, run)
    assert store.current() == version
    remote = load_version(Paths(replica), version, "matrix", store=store)
    local = load_version(Paths(data), version, "matrix")
    assert remote.fallback and remote.model_kind == "popularity"
    for user in (1, 2, 3):
        seen = remote.seen.get(user)
        np.testing.assert_array_equal(seen, local.seen.get(user))
        got = remote.recommend(user, {}, 5, seen)
        assert got == local.recommend(user, {}, 5, seen)
        # Popularity by item id: the five highest ids the user has not seen.
        assert [r["item_id"] for r in got] == [i for i in ITEMS[::-1] if i not in seen][:5]
    assert not (replica / "models").exists() and not (replica / "lancedb").exists()
    assert remote.source[1] != local.source[1]  # the downloaded copy, not the building folder's
