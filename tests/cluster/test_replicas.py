"""Serving replicas under the cluster profile: two ``python -m serving`` processes on one
data folder built by the whole graph with Redis as the online store and Postgres as the
Feast registry. They answer every user exactly as one server of the local profile (SQLite,
file registry) answers on a folder built from the same data, and a promotion under load
reaches both without an error or a response mixing two versions.

The live-server helpers and the load loop are the serving tests' (tests/serving)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recsys.registry import ModelRegistry
from tests.serving.conftest import (
    Pipeline,
    Server,
    materialize_pipeline,
    noisy_version,
    start_server,
    stop_server,
)
from tests.serving.test_switch import (
    THREADS,
    Request,
    each_from_one_version,
    snapshot,
    under_load,
    wait_for_version,
)

pytestmark = pytest.mark.cluster


def build(data: Path) -> Pipeline:
    """The whole graph on the serving tests' synthetic data (tests/serving/conftest.py FAST;
    on less, 5K interactions and two epochs, the two-tower can lose its gate to EASE, and a
    fallback version has no checkpoint for the promotion test's second version), under the
    profile the environment selects."""
    assert materialize_pipeline(data).success
    version = ModelRegistry(data / "models").current()
    assert version is not None
    return Pipeline(data, version, {})


@pytest.fixture
def replicas(
    tmp_path: Path, cluster_env: dict[str, str]
) -> Iterator[tuple[Pipeline, list[Server]]]:
    """The graph under the cluster profile, then two replicas serving its data folder."""
    pipeline = build(tmp_path / "cluster")
    servers: list[Server] = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(pipeline.data, tmp_path / f"replica_{name}.log",
                                        env=cluster_env))  # fmt: skip
        yield pipeline, servers
    finally:
        for server in servers:
            stop_server(server)


def same_training(body: dict[str, Any]) -> dict[str, Any]:
    """A response with each version id reduced to its fingerprint (``<time>-<fingerprint>``):
    two folders built from the same data and config train the same model at other times."""
    return {k: v.split("-", 1)[1] if k.endswith("_version") else v for k, v in body.items()}


def test_two_replicas_answer_every_user_as_one_local_server(
    tmp_path: Path, replicas: tuple[Pipeline, list[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, servers = replicas
    with monkeypatch.context() as local_env:
        local_env.setenv("RECSYS_PROFILE", "local")
        local = build(tmp_path / "local")
        server = start_server(local.data, tmp_path / "local.log", env={"RECSYS_PROFILE": "local"})
    assert not (pipeline.data / "feast" / "online_store.db").exists()  # online: Redis only
    try:
        users = sorted(pipeline.interactions().user_id.unique().tolist())
        assert users == sorted(local.interactions().user_id.unique().tolist())
        for user in users:
            for path in (f"/recommendations/{user}?k=20", f"/candidates/{user}"):
                status, want = server.get(path)
                assert status == 200, (path, want)
                for replica in servers:
                    status, got = replica.get(path)
                    assert status == 200, (path, got)
                    assert same_training(got) == same_training(want), (path, got, want)
        cold = {"age": 30, "gender": "F", "recent": [{"item_id": 1}], "k": 10}
        status, want = server.post("/recommendations", cold)
        assert status == 200, want
        for replica in servers:
            assert same_training(replica.post("/recommendations", cold)[1]) == same_training(want)
    finally:
        stop_server(server)
    # The candidates came from Redis (stored by this version), not recomputed.
    stored = servers[0].get(f"/candidates/{users[0]}")[1]
    assert stored["source"] == "online_store" and stored["stored_version"] == pipeline.version
    print(f"{len(users)} users: two cluster replicas answered as the local server")


def test_a_promotion_under_load_reaches_both_replicas_without_mixing_versions(
    replicas: tuple[Pipeline, list[Server]],
) -> None:
    pipeline, servers = replicas
    first, second = pipeline.version, noisy_version(pipeline, seed=2)
    registry = ModelRegistry(pipeline.data / "models")
    users = pd.read_parquet(pipeline.data / "candidates" / "user_candidates.parquet").user_id
    requests: list[Request] = [("GET", f"/recommendations/{u}?k=10", None) for u in users[:24]]
    requests += [("GET", f"/candidates/{u}", None) for u in users[:8]]
    requests.append(("POST", "/recommendations", '{"age": 40, "gender": "M", "k": 10}'))
    expected = {first: snapshot(servers[0], requests)}
    assert snapshot(servers[1], requests) == expected[first]

    with under_load([s.base for s in servers], requests) as seen:
        time.sleep(0.5)
        # The pipeline's promotion; each replica's watcher notices it on its own.
        builder = registry.record(second)["run_id"]  # type: ignore[index]
        assert materialize_pipeline(pipeline.data, ["promoted_model"], builder).success
        for server in servers:
            wait_for_version(server, second)
        time.sleep(0.5)
    expected[second] = snapshot(servers[0], requests)
    assert snapshot(servers[1], requests) == expected[second]

    responses = each_from_one_version(seen, expected)
    for thread in seen:  # one switch per thread, old to new, never back
        versions = [got[0] for _, _, got in thread]
        changes = sum(a != b for a, b in zip(versions, versions[1:], strict=False))
        assert changes == 1 and versions[0] == first and versions[-1] == second, versions
    for server in servers:
        status, ready = server.get("/readyz")
        assert status == 200 and ready["model_version"] == second
    print(f"{len(responses)} responses from {THREADS} threads on two replicas during a promotion")
