"""The direct SQLite online reader returns exactly what Feast's ``get_online_features``
returns, for every user of the dataset (and unknown ones), for both feature services."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recsys.settings import Settings
from serving.online import SqliteOnlineReader, feast_reader, online_reader
from tests.serving.conftest import Pipeline


@pytest.mark.parametrize("service", ["user_tower_serving_v1", "user_candidates_v1"])
def test_direct_reads_equal_feast_for_every_user(pipeline: Pipeline, service: str) -> None:
    from recsys.store import feature_store_for

    store = feature_store_for(Settings(data_dir=pipeline.data))
    direct, feast = SqliteOnlineReader(store, service), feast_reader(store, service)
    users = sorted(set(pipeline.interactions().user_id.tolist()))
    users += [987_654_321, -1, 0, 2**63 - 1, -(2**63)]  # unknown, and the int64 bounds
    found = 0
    for user in users:
        want = feast(user)
        got = direct(user)
        assert got == want, user
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
        found += any(v is not None for k, v in got.items() if k != "user_id")
    assert found >= len(users) - 5  # every dataset user has a stored row
    direct.close()


def test_reader_falls_back_to_feast_for_another_online_store(pipeline: Pipeline) -> None:
    from recsys.store import feature_store_for

    store = feature_store_for(Settings(data_dir=pipeline.data))
    assert isinstance(online_reader(store, "user_tower_serving_v1"), SqliteOnlineReader)
    assert not isinstance(
        online_reader(store, "user_tower_serving_v1", direct=False), SqliteOnlineReader
    )
    other = SimpleNamespace(
        config=SimpleNamespace(online_store=SimpleNamespace(type="dynamodb")),
        get_feature_service=store.get_feature_service,
    )
    assert not isinstance(online_reader(other, "user_tower_serving_v1"), SqliteOnlineReader)
