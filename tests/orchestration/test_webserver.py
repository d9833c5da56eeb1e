"""The Dagster webserver, started as the README starts it (a real server on loopback), serves
the whole asset graph, its blocking checks, the schedules and the sensor over GraphQL."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUERY = """
{
  assetNodes { assetKey { path } groupName
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    jobs { name } schedules { name cronSchedule } sensors { name } } } }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, query: str) -> dict:
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home),
           "RECSYS_DATA_DIR": str(tmp_path_factory.mktemp("data"))}  # fmt: skip
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(exe), "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("dagster-webserver did not answer within 120 s")
            time.sleep(0.5)
    yield f"{url}/graphql"
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_graphql_serves_assets_checks_schedules_and_sensor(webserver):
    data = _post(webserver, QUERY)["data"]
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert set(nodes) == {
        "incoming_batch", "dataset", "features", "feast_registry", "training_set",
        "two_tower_model", "item_embeddings", "user_candidates", "online_features",
        "promoted_model",
    }  # fmt: skip
    groups = {name: n["groupName"] for name, n in nodes.items()}
    assert groups["incoming_batch"] == "ingest" and groups["two_tower_model"] == "training"
    assert groups["item_embeddings"] == "embeddings" and groups["promoted_model"] == "serving"
    checks = {
        name: {c["name"]: c["blocking"] for c in n["assetChecksOrError"]["checks"]}
        for name, n in nodes.items()
    }
    assert checks["two_tower_model"] == {"quality_gate": True}
    assert checks["incoming_batch"]["interactions_item_id_known"] is True
    assert set(checks["features"]) == {
        "user_profile_valid", "user_activity_valid", "item_content_valid", "item_popularity_valid"
    }  # fmt: skip
    assert all(all(c.values()) for c in checks.values())  # every check is blocking
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert {"full_pipeline", "retrain", "feature_refresh"} <= {j["name"] for j in repo["jobs"]}
    schedules = {s["name"]: s["cronSchedule"] for s in repo["schedules"]}
    assert schedules == {"nightly_retrain": "0 3 * * *", "hourly_feature_refresh": "0 * * * *"}
    assert [s["name"] for s in repo["sensors"]] == ["incoming_batches"]
