"""README command 1 as a user runs it, then the README's Dagster UI on the same instance.

`recsys pipeline` runs in a subprocess (on a small synthetic dataset, fast training) with
`DAGSTER_HOME` pointing at an empty folder: its default output is one progress line per asset
and the summary, nothing of Dagster's or Feast's logs, nothing written to the working
directory. A second run with `-v` shows Dagster's event log. Then `dagster-webserver` on that
`DAGSTER_HOME` answers over GraphQL: both runs are listed under `full_pipeline`, every asset
of the graph was materialized by the first run, with its metadata, and every asset check has
a passing evaluation for the latest materialization.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.orchestration.webserver import ROOT, post, running_webserver

pytestmark = pytest.mark.slow

ASSETS = ["incoming_batch", "dataset", "features", "feast_registry", "training_set",
          "two_tower_model", "catalogue_version", "item_embeddings", "user_candidates", "online_features",
          "promoted_model"]  # fmt: skip
# The gate's baseline rule is off (tests/serving/conftest.py says why): these tests need a
# promoted two-tower; tests/test_gate.py and tests/serving/test_fallback.py test the rule.
FAST = ["--dataset", "synthetic", "--synthetic-interactions", "20000", "--seed", "7",
        "--temperatures", "0.05", "--max-epochs", "3", "--no-baseline-gate"]  # fmt: skip
QUERY = """
{
  runsOrError { ... on Runs { results { runId jobName status } } }
  assetNodes { assetKey { path }
    assetMaterializations(limit: 5) { runId metadataEntries { label } }
    assetChecksOrError { ... on AssetChecks { checks { name blocking
      executionForLatestMaterialization { runId status evaluation { success } } } } } }
}
"""


def recsys_pipeline(cwd: Path, home: Path, data: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LANCEDB_LOG")}
    env |= {"DAGSTER_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "pipeline", *FAST, "--data-dir", str(data), *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def summary(stdout: str) -> dict:
    """The JSON summary printed after the progress lines."""
    start = stdout.index("\n{\n") + 1
    return json.loads(stdout[start:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of README command 1 on one instance (the second with -v): their output."""
    root = tmp_path_factory.mktemp("cli")
    cwd, home, data = root / "cwd", root / "dagster_home", root / "data"
    cwd.mkdir()
    quiet = recsys_pipeline(cwd, home, data)
    assert quiet.returncode == 0, quiet.stdout[-3000:] + quiet.stderr[-3000:]
    verbose = recsys_pipeline(cwd, home, data, "-v")
    assert verbose.returncode == 0, verbose.stdout[-3000:] + verbose.stderr[-3000:]
    return {"cwd": cwd, "home": home, "data": data, "quiet": quiet, "verbose": verbose}


def test_default_output_is_one_line_per_asset_and_the_summary(runs):
    out = runs["quiet"].stdout
    progress = out[: out.index("\n{\n")].splitlines()
    names = [line.split()[1] for line in progress]
    assert sorted(names) == sorted(ASSETS), progress
    assert all(line.startswith("✓ ") and re.search(r"\d+\.\d s", line) for line in progress)
    figures = dict(zip(names, progress, strict=True))
    assert "interactions 20,000" in figures["dataset"]
    assert "3 checks passed" in figures["dataset"]
    assert (
        "version " in figures["two_tower_model"] and "1 check passed" in figures["two_tower_model"]
    )
    result = summary(out)
    assert result["success"] is True and result["failed_checks"] == []
    assert result["dagster_home"] == str(runs["home"])
    both = out + runs["quiet"].stderr
    for chatter in ("DEBUG", "STEP_START", "ASSET_MATERIALIZATION", "Registry cache expired",
                    "Materializing", " INFO "):  # fmt: skip
        assert chatter not in both, chatter


def test_verbose_output_has_dagster_event_log(runs):
    both = runs["verbose"].stdout + runs["verbose"].stderr
    assert "STEP_START" in both and "ASSET_MATERIALIZATION" in both and "DEBUG" in both
    assert summary(runs["verbose"].stdout)["success"] is True


def test_instance_lives_in_dagster_home_only(runs):
    assert list(runs["cwd"].iterdir()) == []  # no SQLite or log folder in the working directory
    home = runs["home"]
    assert (home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
    assert (home / "history" / "runs.db").exists()


def test_ui_shows_both_runs_every_asset_materialized_and_every_check_passed(runs):
    first = summary(runs["quiet"].stdout)["dagster_run"]
    second = summary(runs["verbose"].stdout)["dagster_run"]
    with running_webserver(runs["home"], runs["data"]) as url:
        data = post(url, QUERY)["data"]
    listed = {r["runId"]: r for r in data["runsOrError"]["results"]}
    assert set(listed) == {first, second}
    assert all(
        r["jobName"] == "full_pipeline" and r["status"] == "SUCCESS" for r in listed.values()
    )
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    # The backtest asset has its own job, outside full_pipeline: never run by the pipeline.
    assert not nodes.pop("evaluation/backtest")["assetMaterializations"]
    assert sorted(nodes) == sorted(ASSETS)
    for name, node in nodes.items():
        by_run = {m["runId"]: m for m in node["assetMaterializations"]}
        assert first in by_run, f"{name} not materialized by the first run"
        assert by_run[first]["metadataEntries"], f"{name} has no metadata"
    trained = {m["runId"]: m for m in nodes["two_tower_model"]["assetMaterializations"]}[first]
    labels = {e["label"] for e in trained["metadataEntries"]}
    assert {"test_metrics", "recall_at_k", "training_curve"} <= labels
    checks = [(name, c) for name, n in nodes.items() for c in n["assetChecksOrError"]["checks"]]
    assert len(checks) >= 24 and {name for name, _ in checks} >= {"incoming_batch", "dataset",
                                                                   "features", "two_tower_model"}  # fmt: skip
    for name, check in checks:
        execution = check["executionForLatestMaterialization"]
        assert execution is not None, f"{name}:{check['name']} never evaluated"
        assert check["blocking"] and execution["status"] == "SUCCEEDED", (name, check, execution)
        assert execution["evaluation"]["success"] is True and execution["runId"] == second


def test_two_runs_started_together_one_writes_and_the_other_names_it(runs, tmp_path):
    """Two `recsys pipeline` on one data folder at once: one holds the writer lock and runs,
    the other exits at once (code 2) naming it; nothing is written twice."""
    import pandas as pd

    data = runs["data"]
    before = pd.read_parquet(data / "dataset" / "interactions.parquet")
    versions = sorted(p.name for p in (data / "models" / "versions").iterdir())
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LANCEDB_LOG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "orchestration.cli", "pipeline", *FAST, "--data-dir", str(data),
               "--dagster-home", str(tmp_path / "home")]  # fmt: skip
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    message = outputs[loser][1]
    assert f"being written by recsys pipeline (pid {procs[winner].pid}" in message, message
    after = pd.read_parquet(data / "dataset" / "interactions.parquet")
    assert len(after) == len(before)
    assert sorted(p.name for p in (data / "models" / "versions").iterdir()) == versions
