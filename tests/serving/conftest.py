"""Fixtures of the serving tests: one data folder built by the whole Dagster graph on 20K
synthetic interactions (~45 s, once per session), a real server (``python -m serving``) on
a free loopback port started before the graph's promotion step, and a second version for
the switch tests."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The gate's baseline rule is off: these tests serve a two-tower (its ONNX user tower, its
# vectors, a noisy second version of its weights), and on 67 test users whether it is
# significantly below EASE on planted-factor data is a coin toss (tests/test_gate.py and the
# pipeline tests cover the rule; tests/serving/test_fallback.py the fallback it leads to).
FAST = {"dataset": "synthetic", "synthetic_interactions": 20_000, "synthetic_seed": 7,
        "temperatures": "0.05", "max_epochs": 3, "gate_against_baseline": False}  # fmt: skip


def materialize_pipeline(
    data: Path, selection: list[str] | None = None, run_id: str | None = None, **overrides: Any
) -> Any:
    """Materialize ``selection`` in process. A model version is embedded and promoted only
    by the run that built it (recsys.registry): ``run_id`` continues that run in another
    call, as a re-execution of it would."""
    from dagster import AssetKey, Definitions, materialize

    from orchestration.assets import ASSETS
    from orchestration.resources import PipelineSettings, resources_for

    settings = PipelineSettings(data_dir=str(data), **{**FAST, **overrides})
    if run_id is None:
        return materialize(
            ASSETS, resources=resources_for(settings), selection=selection, raise_on_error=False
        )
    defs = Definitions(assets=ASSETS, resources=resources_for(settings))
    keys = [AssetKey(name) for name in selection] if selection else None
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=keys, run_id=run_id, raise_on_error=False
    )


@dataclass
class Pipeline:
    data: Path
    version: str  # promoted by the pipeline
    # What the server answered before the first promotion: {request: (status, body)}.
    before_promotion: dict[str, tuple[int, Any]]

    def interactions(self) -> pd.DataFrame:
        return pd.read_parquet(self.data / "dataset" / "interactions.parquet")

    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.data / "dataset" / "items.parquet")


@pytest.fixture(scope="session")
def pipeline_and_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, Server]]:
    """The whole Dagster graph on 20K synthetic interactions, with a server started before
    the promotion step: the first deployment, where the server waits for a version."""
    from orchestration.assets import ASSETS
    from recsys.registry import ModelRegistry

    data = tmp_path_factory.mktemp("serving") / "data"
    names = [asset.key.to_user_string() for asset in ASSETS]
    run_id = str(uuid.uuid4())
    result = materialize_pipeline(data, [n for n in names if n != "promoted_model"], run_id)
    assert result.success
    server = start_server(data, data.parent / "server.log", wait_for="/healthz")
    try:
        user = int(pd.read_parquet(data / "dataset" / "interactions.parquet").user_id.iloc[0])
        before = {
            "GET /readyz": server.get("/readyz"),
            "GET /recommendations": server.get(f"/recommendations/{user}"),
            "GET /candidates": server.get(f"/candidates/{user}"),
            "POST /recommendations": server.post("/recommendations", {"age": 30}),
        }
        assert materialize_pipeline(data, ["promoted_model"], run_id).success
        version = ModelRegistry(data / "models").current()
        assert version is not None
        deadline = time.monotonic() + 60
        while server.get("/readyz")[1].get("model_version") != version:
            assert time.monotonic() < deadline, server.get("/readyz")
            time.sleep(0.05)
        yield Pipeline(data, version, before), server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def pipeline(pipeline_and_server: tuple[Pipeline, Server]) -> Pipeline:
    return pipeline_and_server[0]


@pytest.fixture(scope="session")
def server(pipeline_and_server: tuple[Pipeline, Server]) -> Server:
    return pipeline_and_server[1]


@pytest.fixture(scope="session")
def second_version(pipeline: Pipeline) -> str:
    """A second version, embedded (item table and candidates written), not promoted; its
    builder's run id is in ``ModelRegistry.record(version)["run_id"]``."""
    return noisy_version(pipeline)


def noisy_version(pipeline: Pipeline, seed: int = 1) -> str:
    """A new version of ``pipeline``'s data folder, embedded and not promoted, whose weights
    are the promoted version's plus noise drawn from ``seed``.

    Its weights are the first version's with seeded noise, written as a registry version;
    then the pipeline's own assets embed the catalogue into its LanceDB table and compute
    its candidates. A real retrain (``force_retrain`` with another temperature: the same
    settings give the same weights) takes 25-50 s on this machine, most of this file's time
    budget; the server only sees a version's files, which are made the same way here.
    """
    import torch

    from recsys.registry import ModelRegistry, fingerprint

    registry = ModelRegistry(pipeline.data / "models")
    first = registry.path(pipeline.version)
    saved = torch.load(first / "checkpoint.pt", map_location="cpu", weights_only=True)
    noise = torch.Generator().manual_seed(seed)
    weights = {
        name: value + 0.5 * value.std() * torch.randn(value.shape, generator=noise)
        if value.is_floating_point() and value.numel() > 1
        else value
        for name, value in saved["state_dict"].items()
    }
    print_ = fingerprint("serving tests: noisy copy", pipeline.version, str(seed))
    version, run_id = registry.new_version(print_), str(uuid.uuid4())
    with registry.build(version, run_id, {"fingerprint": print_}) as folder:
        torch.save({**saved, "state_dict": weights}, folder / "checkpoint.pt")
        shutil.copy(first / "metrics.json", folder / "metrics.json")
    registry.transition(version, "gated", run_id, "serving tests: a noisy copy of the first")
    result = materialize_pipeline(pipeline.data, ["item_embeddings", "user_candidates"], run_id)
    assert result.success and registry.state(version) == "embedded"
    assert registry.current() == pipeline.version
    return version


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(
    base: tuple[str, int],
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One request on a new connection: (status, parsed JSON body or text)."""
    conn = http.client.HTTPConnection(*base, timeout=timeout)
    try:
        if isinstance(body, dict | list):
            body = json.dumps(body)
            headers = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        kind = response.getheader("content-type") or ""
        return response.status, json.loads(raw) if "json" in kind else raw.decode()
    finally:
        conn.close()


@dataclass
class Server:
    base: tuple[str, int]
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> tuple[int, Any]:
        return call(self.base, "GET", path)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return call(self.base, "POST", path, body, headers)


def start_server(
    data: Path,
    log: Path,
    timeout: float = 120,
    wait_for: str = "/readyz",
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Server:
    """``python -m serving`` on a free port, once ``wait_for`` answers 200 (ten times in a
    row per worker: each worker answers some of the calls); ``env``: more variables."""
    port = free_port()
    env = {**os.environ, "RECSYS_SERVING_RETRY_FAILED_SECONDS": "1", **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--data-dir", str(data), "--port", str(port),
             "--reload-interval", "0.2", "--workers", str(workers)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    server = Server(("127.0.0.1", port), process, log)
    deadline = time.monotonic() + timeout
    ready = 0
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "server not ready: " + log.read_text()[-3000:]
        try:
            ready = ready + 1 if server.get(wait_for)[0] == 200 else 0
        except OSError:
            ready = 0
        if ready >= 10 * workers:
            return server
        time.sleep(0.2 if ready == 0 else 0.02)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
