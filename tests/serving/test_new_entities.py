"""A new user known only through the online store (tier 3): the whole graph on 20K synthetic
events and a real server; then the published dataset is republished with a user it has
never seen (profile only), and ``feature_refresh`` runs: ``GET /recommendations/{id}``
answers from the profile, with an empty history; then with their first five events, and
it answers with those items as the history the user tower read, none of them recommended.
No POST, no retrain: the model never saw this user (the unknown-id slot)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.serving.conftest import FAST, materialize_pipeline, start_server, stop_server

pytestmark = pytest.mark.slow


def feature_refresh(data: Path, source: Path) -> Any:
    from dagster import Definitions

    from orchestration.assets import ASSETS
    from orchestration.definitions import feature_refresh as job
    from orchestration.resources import PipelineSettings, resources_for

    settings = PipelineSettings(data_dir=str(data), **{**FAST, "dataset": str(source)})
    defs = Definitions(assets=ASSETS, jobs=[job], resources=resources_for(settings))
    return defs.resolve_job_def(job.name).execute_in_process(raise_on_error=False)


def source_with(data: Path, source: Path, users: pd.DataFrame, events: pd.DataFrame) -> Path:
    """The published dataset's tables in ``source`` with ``users`` and ``events`` added."""
    source.mkdir()
    shutil.copyfile(data / "dataset" / "items.parquet", source / "items.parquet")
    for name, extra in (("users", users), ("interactions", events)):
        table = pd.read_parquet(data / "dataset" / f"{name}.parquet")
        pd.concat([table, extra.astype(table.dtypes[extra.columns].to_dict())],
                  ignore_index=True).to_parquet(source / f"{name}.parquet")  # fmt: skip
    return source


def wait_for(server: Any, path: str, done: Any, timeout: float = 60) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while not done(answer := server.get(path)):
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    return answer


def test_a_new_user_is_answered_from_the_online_store_with_the_history_used(tmp_path: Path):
    data = tmp_path / "data"
    assert materialize_pipeline(data).success
    published = pd.read_parquet(data / "dataset" / "interactions.parquet")
    profiles = pd.read_parquet(data / "dataset" / "users.parquet")
    new = int(profiles.user_id.max()) + 1
    profile = profiles.iloc[[0]].assign(user_id=new)
    server = start_server(data, tmp_path / "server.log")
    try:
        status, body = server.get(f"/recommendations/{new}")
        assert status == 404, body
        first = source_with(data, tmp_path / "profile", profile, published.iloc[:0])
        assert feature_refresh(data, first).success
        status, body = wait_for(server, f"/recommendations/{new}", lambda a: a[0] == 200)
        assert body["user_id"] == new and body["history"] == [] and len(body["items"]) == 20

        # Their first five events, a minute apart, before the dataset's last one (as_of
        # stays where it was), on five popular items.
        last = published.event_timestamp.max()
        items = published.item_id.value_counts().index[:5].to_numpy()
        events = pd.DataFrame({"user_id": new, "item_id": items, "rating": 4.0,
                               "event_timestamp": last - pd.to_timedelta(range(5, 0, -1), "min")})  # fmt: skip
        second = source_with(data, tmp_path / "events", profile.iloc[:0], events)
        assert feature_refresh(data, second).success
        status, body = wait_for(server, f"/recommendations/{new}?k=100",
                                lambda a: a[0] == 200 and a[1]["history"])  # fmt: skip
        assert body["history"] == items[::-1].tolist()  # newest first
        assert body["excluded"] >= 5
        assert not {i["item_id"] for i in body["items"]} & set(items.tolist())
        assert len(body["items"]) == 100
    finally:
        stop_server(server)
