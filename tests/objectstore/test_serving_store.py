"""Serving from the artifact store: the whole Dagster graph publishes its version on a local
S3 server (moto), and a server on a data folder holding only the Feast store (another
host's: under the cluster profile that is Redis and Postgres) downloads the version the
store's pointer names and the dataset and features it serves with, opens its item table on
the store, answers as a server on the building folder does, and switches when a new version
is published."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pandas as pd
import pytest

from recsys.objectstore import ArtifactStore
from recsys.registry import ModelRegistry
from tests.objectstore.conftest import CREDENTIALS, new_bucket
from tests.serving.conftest import (
    Pipeline,
    Server,
    materialize_pipeline,
    noisy_version,
    start_server,
    stop_server,
)

SMALL = {"synthetic_interactions": 5_000}


@pytest.fixture(scope="module")
def published(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, dict[str, str]]]:
    """The graph run with the store set; (its data folder and version, the store's env)."""
    env = {"RECSYS_ARTIFACT_STORE": "", "RECSYS_S3_ENDPOINT_URL": s3_endpoint, **CREDENTIALS}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        env["RECSYS_ARTIFACT_STORE"] = new_bucket(s3_endpoint)
        for name, value in env.items():
            patch.setenv(name, value)
        data = tmp_path_factory.mktemp("store") / "data"
        assert materialize_pipeline(data, **SMALL).success
        version = ModelRegistry(data / "models").current()
        assert version is not None
        yield Pipeline(data, version, {}), env


@pytest.fixture(scope="module")
def replica(published: tuple[Pipeline, dict[str, str]]) -> Iterator[Server]:
    """A server on a data folder holding a copy of the Feast store only."""
    pipeline, env = published
    folder = pipeline.data.parent / "replica"
    shutil.copytree(pipeline.data / "feast", folder / "feast")
    server = start_server(folder, folder.parent / "replica.log", env=env)
    try:
        yield server
    finally:
        stop_server(server)


def store_of(env: dict[str, str]) -> ArtifactStore:
    return ArtifactStore(env["RECSYS_ARTIFACT_STORE"], env["RECSYS_S3_ENDPOINT_URL"])


def test_the_graph_publishes_its_version(
    published: tuple[Pipeline, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, env = published
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    store = store_of(env)
    local = ModelRegistry(pipeline.data / "models")
    assert store.current() == pipeline.version
    manifest = store.manifest(pipeline.version)
    assert manifest is not None
    files = {p.relative_to(local.path(pipeline.version)).as_posix()
             for p in local.path(pipeline.version).rglob("*") if p.is_file()}  # fmt: skip
    assert set(manifest["files"]) == files
    assert {"checkpoint.pt", "user_tower.onnx", "candidates.parquet"} <= files
    assert store.table_versions() == [pipeline.version]


def test_replica_serves_the_stores_version(
    published: tuple[Pipeline, dict[str, str]], replica: Server
) -> None:
    pipeline, _ = published
    folder = pipeline.data.parent / "replica"
    assert sorted(p.name for p in folder.iterdir()) == [".artifact_cache", "feast"]
    status, ready = replica.get("/readyz")
    assert status == 200 and ready["model_version"] == pipeline.version, ready
    cache = folder / ".artifact_cache"
    assert (cache / "versions" / pipeline.version / "checkpoint.pt").exists()
    for name in ("dataset", "features"):
        (copy,) = (cache / "data" / name).iterdir()
        assert copy.name == (pipeline.data / name).resolve().name
    users = pd.read_parquet(pipeline.data / "dataset" / "interactions.parquet").user_id.unique()
    local = start_server(pipeline.data, pipeline.data.parent / "local.log")
    try:
        for user in users[:20].tolist():
            got, want = (
                replica.get(f"/recommendations/{user}?k=10"),
                local.get(f"/recommendations/{user}?k=10"),
            )
            assert got[0] == 200, got
            assert got == want
        cold = {"age": 30, "recent": [{"item_id": 1, "rating": 5.0}]}
        assert replica.post("/recommendations", cold) == local.post("/recommendations", cold)
    finally:
        stop_server(local)


def test_replica_switches_when_the_store_pointer_moves(
    published: tuple[Pipeline, dict[str, str]], replica: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, env = published
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    second = noisy_version(pipeline)  # embedded by the graph's own assets, not promoted
    run_id = ModelRegistry(pipeline.data / "models").record(second)["run_id"]  # type: ignore[index]
    assert replica.get("/readyz")[1]["model_version"] == pipeline.version
    assert materialize_pipeline(pipeline.data, ["promoted_model"], run_id, **SMALL).success
    assert store_of(env).current() == second
    deadline = time.monotonic() + 60
    while (ready := replica.get("/readyz")[1]).get("model_version") != second:
        assert time.monotonic() < deadline, ready
        time.sleep(0.1)
    user = int(pipeline.interactions().user_id.iloc[0])
    status, body = replica.get(f"/recommendations/{user}?k=5")
    assert status == 200 and body["model_version"] == second, body
