"""The cluster profile's online store: the foundation pipeline materializes into Redis, the
candidates writer pushes there, and the server's direct Redis reader returns exactly what
Feast's ``get_online_features`` returns, for every user of both services."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.settings import Settings

pytestmark = pytest.mark.cluster

SERVICES = ["user_tower_serving_v1", "user_candidates_v1"]
UNKNOWN = [987_654_321, -1, 0, 2**63 - 1, -(2**63)]  # and the int64 bounds


def _settings(data: Path, redis_url: str, postgres_url: str, **extra: Any) -> Settings:
    return Settings(data_dir=data, dataset="synthetic", synthetic_interactions=3_000,
                    synthetic_seed=5, profile="cluster", redis_url=redis_url,
                    postgres_url=postgres_url, **extra)  # fmt: skip


def _push_candidates(store: Any, user_ids: np.ndarray, item_ids: np.ndarray, seed: int) -> None:
    """Random top-10 candidates of every user, written as the pipeline writes them."""
    from towers.candidates import candidate_table, push_online

    rng = np.random.default_rng(seed)
    positions = np.argsort(rng.random((len(user_ids), len(item_ids))), axis=1)[:, :10]
    scores = -np.sort(-rng.random(positions.shape).astype(np.float32), axis=1)
    scores[0, 5:] = -np.inf  # a user with fewer candidates than k
    as_of = datetime(2024, 10, 1, tzinfo=UTC)
    push_online(store, candidate_table(user_ids, item_ids, positions, scores, as_of, f"v{seed}"))


def test_redis_reader_equals_feast_for_every_user(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    from recsys.pipeline import build
    from recsys.store import apply, feature_store_for
    from serving.online import RedisOnlineReader, feast_reader, online_reader

    settings = _settings(tmp_path / "a", redis_url, postgres_url)
    build(settings)
    store = feature_store_for(settings)
    assert store.config.online_store.type == "redis"
    assert store.config.registry.registry_type == "sql"
    dataset = settings.paths.dataset
    users = np.sort(pd.read_parquet(dataset / "users.parquet").user_id.to_numpy())
    items = np.sort(pd.read_parquet(dataset / "items.parquet").item_id.to_numpy())
    _push_candidates(store, users, items, seed=1)

    # A second data folder on the same Redis and Postgres: its own project, so writing the
    # same users there leaves the first folder's values alone.
    other = _settings(tmp_path / "b", redis_url, postgres_url)
    other_store = apply(other.paths, feature_store_for(other))
    assert other_store.config.project != store.config.project
    _push_candidates(other_store, users, items, seed=2)

    for service in SERVICES:
        reader, feast = online_reader(store, service), feast_reader(store, service)
        assert isinstance(reader, RedisOnlineReader)
        found = 0
        for user in [*users.tolist(), *UNKNOWN]:
            want, got = feast(user), reader(user)
            assert got == want, (service, user)
            assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
            found += any(v is not None for k, v in got.items() if k != "user_id")
        assert found == len(users)  # every user has a row of this service, no unknown one
        if service == "user_candidates_v1":
            assert {reader(int(u))["model_version"] for u in users} == {"v1"}
        reader.close()  # type: ignore[attr-defined]


def test_redis_reader_fails_fast_when_redis_is_down(tmp_path: Path, postgres_url: str) -> None:
    """Nothing listens on the port: the lookup raises at once (no retries), naming Redis."""
    import redis

    from recsys.store import apply, feature_store_for, online_store_description
    from serving.online import RedisOnlineReader

    settings = _settings(tmp_path / "a", "redis://127.0.0.1:1/0", postgres_url)
    store = apply(settings.paths, feature_store_for(settings))
    reader = RedisOnlineReader(store, "user_tower_serving_v1", timeout_seconds=0.5)
    with pytest.raises(redis.ConnectionError):
        reader(1)
    assert online_store_description(store.config) == "redis at 127.0.0.1:1 db 0"
