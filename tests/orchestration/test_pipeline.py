"""The whole Dagster graph on a small synthetic dataset in a temporary folder: it
materializes end to end and promotes a version; a second run with no new data makes no new
version; every kind of corrupt incoming batch fails the check that names it, blocks
everything downstream and leaves the current version current; a good batch is appended; a
run killed mid-training leaves the current version intact and the next run recovers."""

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
FAST = {"dataset": "synthetic", "synthetic_interactions": 20_000, "synthetic_seed": 7,
        "temperatures": "0.05", "max_epochs": 3}  # fmt: skip
DOWNSTREAM = {"dataset", "features", "feast_registry", "training_set", "two_tower_model",
              "item_embeddings", "user_candidates", "online_features", "promoted_model"}  # fmt: skip


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


def test_whole_graph_promotes_a_consistent_version(pipeline_dir):
    from recsys.settings import Settings
    from recsys.store import feature_store_for
    from recsys.vectors import ItemIndex, list_versions

    reg = registry(pipeline_dir)
    current = reg.current()
    assert current is not None and reg.versions() == [current]
    assert reg.info(current)["state"] == "current"
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
    # As a version from before the user tower was exported: the run gives it its graph.
    graph = registry(pipeline_dir).path(before) / "user_tower.onnx"
    graph.unlink()
    result = run(pipeline_dir)
    assert result.success
    reg = registry(pipeline_dir)
    assert reg.versions() == [before] and reg.current() == before
    assert graph.stat().st_size > 0


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
    result = run(pipeline_dir, selection=refresh)
    assert result.success and failed_checks(result) == set()
    events = pd.read_parquet(pipeline_dir / "dataset" / "interactions.parquet")
    assert len(events) == rows_before + 5
    assert list((incoming / "processed").glob("*/good.parquet"))


def test_killed_run_leaves_current_intact_and_next_run_recovers(pipeline_dir):
    current = registry(pipeline_dir).current()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_pipeline import run
        from pathlib import Path
        run(Path({str(pipeline_dir)!r}), selection=["two_tower_model"], force_retrain=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
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
    assert incoming_batches.job_name == "feature_refresh"
