"""The whole Dagster graph on a small synthetic dataset in a temporary folder: it
materializes end to end and promotes a version; a second run with no new data makes no new
version and changes no byte of it; every kind of corrupt incoming batch fails the check that
names it, blocks everything downstream and leaves the current version current; a good batch
is appended; a run killed mid-training leaves the current version intact and the next run
recovers; a version whose run died before promotion is never promoted by a later run."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import materialize

from orchestration.assets import ASSETS, check_name
from orchestration.resources import PipelineSettings, resources_for
from recsys.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
# The gate's baseline rule is off (tests/serving/conftest.py says why): these tests need a
# promoted two-tower; tests/test_gate.py and tests/serving/test_fallback.py test the rule.
FAST = {"dataset": "synthetic", "synthetic_interactions": 20_000, "synthetic_seed": 7,
        "temperatures": "0.05", "max_epochs": 3, "gate_against_baseline": False}  # fmt: skip
DOWNSTREAM = {"dataset", "features", "feast_registry", "training_set", "two_tower_model",
              "catalogue_version", "item_embeddings", "user_candidates", "online_features", "promoted_model"}  # fmt: skip


def resources(data: Path, **overrides):
    return resources_for(PipelineSettings(data_dir=str(data), **{**FAST, **overrides}))


def run(data: Path, selection=None, **overrides):
    return materialize(ASSETS, resources=resources(data, **overrides), selection=selection,
                       raise_on_error=False)  # fmt: skip


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def failed_checks(result) -> set[str]:
    return {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("pipeline") / "data"
    result = run(data)
    assert result.success
    assert materialized(result) == DOWNSTREAM | {"incoming_batch"}
    assert failed_checks(result) == set()
    return data


def registry(data: Path) -> ModelRegistry:
    return ModelRegistry(data / "models")


def version_files(data: Path) -> dict[str, str]:
    """SHA-256 of every file of every version and of every version's state file."""
    models = data / "models"
    files = [*(models / "versions").rglob("*"), *(models / "states").glob("*.json")]
    return {str(f.relative_to(models)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files if f.is_file()}  # fmt: skip


def table_versions(data: Path) -> dict[str, int]:
    """The LanceDB table version (a counter every write increments) of each item table."""
    import lancedb

    from recsys.index.table import list_versions, table_name

    db, versions = lancedb.connect(data / "lancedb"), {}
    for version in list_versions(data / "lancedb", include_unpublished=True):
        try:
            versions[version] = db.open_table(table_name(version)).version
        except ValueError:  # a write killed before its first commit
            versions[version] = -1
    return versions


def test_whole_graph_promotes_a_consistent_version(pipeline_dir):
    from recsys.index.search import ItemIndex
    from recsys.index.table import list_versions
    from recsys.settings import Settings
    from recsys.store import feature_store_for

    reg = registry(pipeline_dir)
    current = reg.current()
    assert current is not None and reg.versions() == [current]
    assert reg.info(current)["state"] == "promoted"
    assert list_versions(pipeline_dir / "lancedb") == [current]
    index = ItemIndex.open(pipeline_dir / "lancedb", current, mode="matrix")
    items = pd.read_parquet(pipeline_dir / "dataset" / "items.parquet")
    assert index.rows == len(items)
    # The candidates are online, tagged with the current version.
    store = feature_store_for(Settings(data_dir=pipeline_dir))
    user = int(pd.read_parquet(pipeline_dir / "dataset" / "interactions.parquet").user_id.iloc[0])
    online = store.get_online_features(
        features=store.get_feature_service("user_candidates_v1"), entity_rows=[{"user_id": user}]
    ).to_dict()
    assert online["model_version"] == [current]
    assert len(online["candidate_item_ids"][0]) == 100
    metrics = reg.metrics(current)["models"]
    assert {"popularity", "EASE", "two-tower (softmax)"} <= set(metrics)
    assert (reg.path(current) / "user_tower.onnx").stat().st_size > 0  # the served tower


def test_second_run_without_new_data_makes_no_new_version(pipeline_dir):
    before = registry(pipeline_dir).current()
    files, tables = version_files(pipeline_dir), table_versions(pipeline_dir)
    result = run(pipeline_dir)
    assert result.success
    reg = registry(pipeline_dir)
    assert reg.versions() == [before] and reg.current() == before
    # A version is immutable: no byte of its artifacts, no write to its vector table.
    assert version_files(pipeline_dir) == files and table_versions(pipeline_dir) == tables
    assert files and tables == {before: tables[before]}


def _base_batch(data: Path, n: int = 3) -> pd.DataFrame:
    events = pd.read_parquet(data / "dataset" / "interactions.parquet")
    sample = events.sort_values("event_timestamp").tail(n).reset_index(drop=True)
    # New events: a second after the last one, on known users and items.
    sample["event_timestamp"] = events.event_timestamp.max() + pd.to_timedelta(
        range(1, n + 1), unit="s"
    )
    sample["rating"] = 4.0
    return sample


def _corrupt(kind: str, frame: pd.DataFrame) -> pd.DataFrame | None:
    frame = frame.copy()
    if kind == "null_ids":
        frame["user_id"] = frame["user_id"].astype("float64")
        frame.loc[0, "user_id"] = None
    elif kind == "duplicate_events":
        frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    elif kind == "rating_out_of_range":
        frame.loc[1, "rating"] = 11.0
    elif kind == "future_timestamps":
        frame.loc[0, "event_timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=30)
    elif kind == "unknown_item_ids":
        frame.loc[2, "item_id"] = 987_654_321
    elif kind == "missing_column":
        frame = frame.drop(columns=["rating"])
    elif kind == "wrong_type":
        frame["item_id"] = "item-" + frame["item_id"].astype(str)
    elif kind == "empty_file":
        frame = frame.iloc[0:0]
    elif kind == "zero_bytes":
        return None
    return frame


CORRUPTIONS = {
    "null_ids": "interactions.user_id not null",
    "duplicate_events": "interactions events unique",
    "rating_out_of_range": "interactions.rating in range",
    "future_timestamps": "interactions.event_timestamp not after as_of",
    "unknown_item_ids": "interactions.item_id known",
    "missing_column": "interactions columns",
    "wrong_type": "interactions.item_id type",
    "empty_file": "interactions not empty",
    "zero_bytes": "interactions readable",
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_batch_fails_its_check_and_blocks_everything_downstream(pipeline_dir, kind):
    reg = registry(pipeline_dir)
    current, versions = reg.current(), reg.versions()
    rows_before = len(pd.read_parquet(pipeline_dir / "dataset" / "interactions.parquet"))
    incoming = pipeline_dir / "incoming"
    incoming.mkdir(exist_ok=True)
    path = incoming / f"batch-{kind}.parquet"
    frame = _corrupt(kind, _base_batch(pipeline_dir))
    if frame is None:
        path.write_bytes(b"")
    else:
        frame.to_parquet(path)

    result = run(pipeline_dir, force_retrain=True)  # would train if the gate let it through

    assert check_name(CORRUPTIONS[kind]) in failed_checks(result)
    assert materialized(result) & DOWNSTREAM == set()  # nothing downstream ran
    reg = registry(pipeline_dir)
    assert reg.current() == current and reg.versions() == versions
    assert len(pd.read_parquet(pipeline_dir / "dataset" / "interactions.parquet")) == rows_before
    # Nothing lost: the file is kept, with the report, under rejected/.
    assert not path.exists()
    (kept,) = (incoming / "rejected").glob(f"*/batch-{kind}.parquet")
    assert (kept.parent / "report.json").exists()


def test_good_batch_is_appended_and_refreshes_features(pipeline_dir):
    rows_before = len(pd.read_parquet(pipeline_dir / "dataset" / "interactions.parquet"))
    incoming = pipeline_dir / "incoming"
    incoming.mkdir(exist_ok=True)
    batch = _base_batch(pipeline_dir, n=5)
    batch.to_parquet(incoming / "good.parquet")
    refresh = ["incoming_batch", "dataset", "features", "feast_registry", "online_features",
               "user_candidates"]  # fmt: skip
    files, tables = version_files(pipeline_dir), table_versions(pipeline_dir)
    published = pipeline_dir / "candidates" / "user_candidates.parquet"
    published_before = published.stat().st_mtime_ns
    result = run(pipeline_dir, selection=refresh)
    assert result.success and failed_checks(result) == set()
    events = pd.read_parquet(pipeline_dir / "dataset" / "interactions.parquet")
    assert len(events) == rows_before + 5
    assert list((incoming / "processed").glob("*/good.parquet"))
    # The current version's candidates, recomputed with the new features, are published to
    # data/candidates (and online); the version itself is not written to.
    assert published.stat().st_mtime_ns != published_before
    assert set(pd.read_parquet(published).model_version) == {registry(pipeline_dir).current()}
    assert version_files(pipeline_dir) == files and table_versions(pipeline_dir) == tables


def start_run(data: Path, selection: list[str]) -> subprocess.Popen:
    """A forced retrain of ``selection`` in a child process (to be killed)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_pipeline import run
        from pathlib import Path
        run(Path({str(data)!r}), selection={selection!r}, force_retrain=True)
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def test_killed_run_leaves_current_intact_and_next_run_recovers(pipeline_dir):
    current = registry(pipeline_dir).current()
    child = start_run(pipeline_dir, ["two_tower_model"])
    staging = pipeline_dir / "models" / ".staging"
    deadline = time.monotonic() + 120
    while not (staging.exists() and any(staging.iterdir())):
        assert child.poll() is None, "the run ended before it started training"
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    reg = registry(pipeline_dir)
    assert reg.current() == current and any(staging.iterdir())  # half a version, not visible
    assert current in reg.versions() and len(reg.versions()) == len(set(reg.versions()))

    result = run(pipeline_dir, force_retrain=True)
    assert result.success
    reg = registry(pipeline_dir)
    assert not staging.exists() or not any(staging.iterdir())
    assert reg.current() != current and reg.info(current)["state"] == "retired"


def test_a_version_whose_run_died_before_promotion_is_never_promoted(pipeline_dir):
    """The issue's bug: a run is killed after its version passed the gate (while it
    embeds the items or computes candidates); a newer run promotes its own version; a third
    run must neither embed nor promote the old one."""
    from recsys.registry import EMBEDDED, GATED, PROMOTED, REJECTED

    reg = registry(pipeline_dir)
    current = reg.current()
    child = start_run(pipeline_dir, ["two_tower_model", "item_embeddings", "user_candidates"])
    deadline = time.monotonic() + 300
    while not [v for v in reg.recorded() if reg.state(v) in (GATED, EMBEDDED)]:
        assert child.poll() is None, "the run ended before its version passed the gate"
        assert time.monotonic() < deadline, "the version never passed the gate"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (old,) = [v for v in reg.recorded() if reg.state(v) in (GATED, EMBEDDED)]
    assert old in reg.versions() and reg.current() == current

    newer_run = run(pipeline_dir, force_retrain=True)
    assert newer_run.success
    reg = registry(pipeline_dir)
    newer = reg.current()
    assert newer not in (old, current) and reg.previous() == current
    assert reg.state(old) == REJECTED and reg.state(newer) == PROMOTED
    reason = reg.record(old)["history"][-1]["reason"]  # type: ignore[index]
    assert reason.startswith("abandoned: run ") and reason.endswith("ended before promotion")
    # Retention: current, previous and the last keep_versions (3) stay, with their tables.
    meta = newer_run.asset_materializations_for_node("promoted_model")[0].metadata
    deleted = meta["versions_deleted"].value
    assert {current, newer, *reg.versions()[-3:]} == set(reg.versions())
    assert not set(deleted) & set(reg.versions())
    assert {current, newer} <= set(table_versions(pipeline_dir)) <= set(reg.versions())

    files, tables = version_files(pipeline_dir), table_versions(pipeline_dir)
    third = run(pipeline_dir)  # unchanged data: reuses the current version
    assert third.success
    reg = registry(pipeline_dir)
    assert reg.current() == newer and reg.state(old) == REJECTED
    # Nothing embedded, nothing promoted, nothing lost: every version's bytes and every
    # LanceDB table's version as they were.
    assert version_files(pipeline_dir) == files and table_versions(pipeline_dir) == tables
    status = third.asset_materializations_for_node("item_embeddings")[0].metadata["status"]
    assert status.value.startswith("no new version in this run")


def test_sensor_requests_one_refresh_run_per_set_of_new_files(tmp_path, monkeypatch):
    from dagster import RunRequest, SkipReason, build_sensor_context

    from orchestration.definitions import incoming_batches

    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    assert isinstance(incoming_batches(build_sensor_context()), SkipReason)
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "a.parquet").write_bytes(b"x")
    first = incoming_batches(build_sensor_context())
    assert isinstance(first, RunRequest)
    assert incoming_batches(build_sensor_context()).run_key == first.run_key  # same files
    (tmp_path / "incoming" / "b.parquet").write_bytes(b"y")
    assert incoming_batches(build_sensor_context()).run_key != first.run_key
    assert first.job_name == "feature_refresh"  # interactions only
    assert {job.name for job in incoming_batches.jobs} == {"feature_refresh", "catalogue_refresh"}
