"""A new user known only through the online store (tier 3): the whole graph on 20K synthetic
events and a real server; then a user it has never seen arrives as a sender would send
them: their profile in ``incoming/users/``, and the job the ``incoming_batches`` sensor
picks for it (``catalogue_refresh``) runs: ``GET /recommendations/{id}`` answers from the
profile, with an empty history; then their first five events in ``incoming/`` and
``feature_refresh``: it answers with those items as the history the user tower read, none
of them recommended. No POST, no retrain: the model never saw this user (the unknown-id
slot)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.serving.conftest import FAST, materialize_pipeline, start_server, stop_server

pytestmark = pytest.mark.slow


def run_job(data: Path, name: str) -> Any:
    from dagster import Definitions

    from orchestration.assets import ASSETS
    from orchestration.definitions import catalogue_refresh, feature_refresh
    from orchestration.resources import PipelineSettings, resources_for

    settings = PipelineSettings(data_dir=str(data), **FAST)
    defs = Definitions(assets=ASSETS, jobs=[feature_refresh, catalogue_refresh],
                       resources=resources_for(settings))  # fmt: skip
    return defs.resolve_job_def(name).execute_in_process(raise_on_error=False)


def sensor_job(data: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The job the ``incoming_batches`` sensor requests for what is pending now."""
    from dagster import build_sensor_context

    from orchestration.definitions import incoming_batches

    monkeypatch.setenv("RECSYS_DATA_DIR", str(data))
    return str(incoming_batches(build_sensor_context()).job_name)


def wait_for(server: Any, path: str, done: Any, timeout: float = 60) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while not done(answer := server.get(path)):
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    return answer


def test_a_new_user_is_answered_from_the_online_store_with_the_history_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = tmp_path / "data"
    assert materialize_pipeline(data).success
    published = pd.read_parquet(data / "dataset" / "interactions.parquet")
    profiles = pd.read_parquet(data / "dataset" / "users.parquet")
    new = int(profiles.user_id.max()) + 1
    last = published.event_timestamp.max()
    # True from ten minutes before the dataset's last event: as_of stays where it was.
    profile = profiles.iloc[[0]].assign(user_id=new, valid_from=last - pd.Timedelta(minutes=10))
    incoming = data / "incoming"
    server = start_server(data, tmp_path / "server.log")
    try:
        status, body = server.get(f"/recommendations/{new}")
        assert status == 404, body
        (incoming / "users").mkdir(parents=True, exist_ok=True)
        profile.to_parquet(incoming / "users" / "sign-up.parquet")
        assert sensor_job(data, monkeypatch) == "catalogue_refresh"
        assert run_job(data, "catalogue_refresh").success
        assert (incoming / "processed").exists() and not list(incoming.glob("users/*.parquet"))
        status, body = wait_for(server, f"/recommendations/{new}", lambda a: a[0] == 200)
        assert body["user_id"] == new and body["history"] == [] and len(body["items"]) == 20

        # Their first five events, a minute apart, before the dataset's last one (as_of
        # stays where it was), on five popular items.
        items = published.item_id.value_counts().index[:5].to_numpy()
        events = pd.DataFrame({"user_id": new, "item_id": items, "rating": 4.0,
                               "event_timestamp": last - pd.to_timedelta(range(5, 0, -1), "min")})  # fmt: skip
        events.astype(published.dtypes[events.columns].to_dict()).to_parquet(
            incoming / "first-events.parquet"
        )
        assert sensor_job(data, monkeypatch) == "feature_refresh"
        assert run_job(data, "feature_refresh").success
        status, body = wait_for(server, f"/recommendations/{new}?k=100",
                                lambda a: a[0] == 200 and a[1]["history"])  # fmt: skip
        assert body["history"] == items[::-1].tolist()  # newest first
        assert body["excluded"] >= 5
        assert not {i["item_id"] for i in body["items"]} & set(items.tolist())
        assert len(body["items"]) == 100
    finally:
        stop_server(server)
