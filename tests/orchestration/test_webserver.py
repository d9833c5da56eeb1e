"""The Dagster webserver, started as the README starts it (a real server on loopback), serves
the whole asset graph, its blocking checks, the schedules and the sensor over GraphQL."""

import shutil

import pytest

from tests.orchestration.webserver import ROOT, post, running_webserver

QUERY = """
{
  assetNodes { assetKey { path } groupName
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    jobs { name } schedules { name cronSchedule } sensors { name } } } }
}
"""


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with running_webserver(home, tmp_path_factory.mktemp("data")) as url:
        yield url


def test_graphql_serves_assets_checks_schedules_and_sensor(webserver):
    data = post(webserver, QUERY)["data"]
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert set(nodes) == {
        "incoming_batch", "dataset", "features", "feast_registry", "training_set",
        "two_tower_model", "catalogue_version", "item_embeddings", "user_candidates",
        "online_features",
        "promoted_model", "evaluation/backtest",
    }  # fmt: skip
    groups = {name: n["groupName"] for name, n in nodes.items()}
    assert groups["evaluation/backtest"] == "evaluation"
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
    assert {"full_pipeline", "retrain", "feature_refresh", "backtest"} <= {
        j["name"] for j in repo["jobs"]
    }
    schedules = {s["name"]: s["cronSchedule"] for s in repo["schedules"]}
    assert schedules == {"nightly_retrain": "0 3 * * *", "hourly_feature_refresh": "0 * * * *",
                         "catalogue_refresh_schedule": "*/15 * * * *"}  # fmt: skip
    assert [s["name"] for s in repo["sensors"]] == ["incoming_batches"]
