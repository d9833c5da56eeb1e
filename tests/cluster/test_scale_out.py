"""The whole graph scaled out on this machine: the cluster profile (Redis online store,
Postgres registry), feature tables and the point-in-time join on Spark ``local[2]``, the
served model trained by two DDP processes launched by torchrun, and the version published
on an S3 server (moto). A replica holding only the Feast store's configuration, no model,
vectors, dataset or features of its own, answers every request exactly as a server on the
building data folder does."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recsys.objectstore import ArtifactStore
from recsys.registry import ModelRegistry
from tests.objectstore.conftest import CREDENTIALS, new_bucket, s3_endpoint  # noqa: F401
from tests.serving.conftest import materialize_pipeline, start_server, stop_server

pytestmark = [pytest.mark.cluster, pytest.mark.spark]


@pytest.fixture
def scaled_out(
    tmp_path: Path, cluster_env: dict[str, str], s3_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, Any, dict[str, str]]]:  # fmt: skip
    """(data folder, the Dagster result, the environment) of one run of the whole graph."""
    # One Feast project for both folders: by default it derives from the folder's path.
    env = {**cluster_env, **CREDENTIALS, "RECSYS_TRAIN_PROCESSES": "2",
           "RECSYS_S3_ENDPOINT_URL": s3_endpoint,
           "RECSYS_FEAST_PROJECT": f"scale_out_{uuid.uuid4().hex[:8]}"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    env["RECSYS_ARTIFACT_STORE"] = new_bucket(s3_endpoint)
    monkeypatch.setenv("RECSYS_ARTIFACT_STORE", env["RECSYS_ARTIFACT_STORE"])
    data = tmp_path / "data"
    result = materialize_pipeline(data)
    assert result.success
    yield data, result, env


def metadata(result: Any, asset: str) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def test_whole_graph_on_spark_ddp_and_s3_then_a_replica_serves_from_the_store(
    tmp_path: Path, scaled_out: tuple[Path, Any, dict[str, str]]
) -> None:
    data, result, env = scaled_out
    # Spark built the feature tables and is Feast's offline store (the training set's join).
    assert metadata(result, "features")["engine"] == "spark"
    joined_by = metadata(result, "training_set")["offline_store"]
    assert joined_by == "recsys.spark.offline_store.SparkAsofOfflineStore", joined_by
    # Two processes trained the served checkpoint.
    version = ModelRegistry(data / "models").current()
    assert version is not None
    runs = json.loads((data / "models" / "versions" / version / "runs.json").read_text())
    served = runs["choices"]["two-tower (softmax)"]["served"]
    assert served["trained_by"] == {"processes": 2, "backend": "gloo", "launcher": "torchrun"}
    # The version, its vectors and the pointer are on the store.
    store = ArtifactStore(env["RECSYS_ARTIFACT_STORE"], env["RECSYS_S3_ENDPOINT_URL"])
    assert store.current() == version and store.table_versions() == [version]

    replica_dir = tmp_path / "replica"
    shutil.copytree(data / "feast", replica_dir / "feast")
    replica = start_server(replica_dir, tmp_path / "replica.log", env=env)
    local = start_server(data, tmp_path / "local.log", env=env)
    try:
        assert replica.get("/readyz")[1]["model_version"] == version
        assert sorted(p.name for p in replica_dir.iterdir()) == [".artifact_cache", "feast"]
        users = sorted(set(pd.read_parquet(data / "dataset" / "interactions.parquet").user_id))
        for user in users[:25]:
            got = replica.get(f"/recommendations/{user}?k=10")
            assert got[0] == 200 and got[1]["model_version"] == version, got
            assert got == local.get(f"/recommendations/{user}?k=10")
        cold = {"age": 30, "recent": [{"item_id": 1, "rating": 5.0}]}
        assert replica.post("/recommendations", cold) == local.post("/recommendations", cold)
    finally:
        stop_server(replica)
        stop_server(local)
