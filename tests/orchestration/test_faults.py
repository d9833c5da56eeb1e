"""Fault injection on the data side of the lifecycle: re-sent batches and files, processes
SIGKILLed at the worst moments, a dataset-level check failing. Each scenario ends with
nothing lost, nothing duplicated, what is published unchanged where it should be, and the
next good run succeeding.

The runs are the real Dagster assets (`dagster.materialize`) on a real data folder; a kill
is a real SIGKILL of a child process at a chosen point, placed there by wrapping one
function of the pipeline inside that child (no hook in the product's code).
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from dagster import materialize

from orchestration.assets import ASSETS
from orchestration.resources import PipelineSettings, resources_for

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"dataset": "synthetic", "synthetic_interactions": 20_000, "synthetic_seed": 11}
INGEST = ["incoming_batch", "dataset"]
DATA_SIDE = ["incoming_batch", "dataset", "features"]


def run(data: Path, selection=DATA_SIDE):
    pipeline = PipelineSettings(data_dir=str(data), **SETTINGS)
    return materialize(ASSETS, resources=resources_for(pipeline), selection=selection,
                       raise_on_error=False)  # fmt: skip


def failed_checks(result) -> set[str]:
    return {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}


def events(data: Path) -> pd.DataFrame:
    return pd.read_parquet(data / "dataset" / "interactions.parquet")


def assert_no_duplicate_events(data: Path) -> None:
    keys = events(data)[["user_id", "item_id", "event_timestamp"]]
    assert not keys.duplicated().any(), "an event was appended twice"


def published(data: Path, name: str) -> str:
    """Which version of a published folder the link points at."""
    return (data / name).resolve().name


def new_events(data: Path, n: int, offset_s: int = 1) -> pd.DataFrame:
    """``n`` new events on known users and items, after the last one."""
    base = events(data).sort_values("event_timestamp").tail(n).reset_index(drop=True)
    base["event_timestamp"] = events(data).event_timestamp.max() + pd.to_timedelta(
        range(offset_s, offset_s + n), unit="s"
    )
    base["rating"] = 3.0
    return base


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A data folder with its dataset and features published (the data side of a run)."""
    data = tmp_path_factory.mktemp("faults") / "data"
    result = run(data)
    assert result.success and not failed_checks(result)
    return data


@pytest.fixture
def data(built, tmp_path) -> Path:
    """A private copy of the built folder (published links are relative: the copy is whole)."""
    copy = tmp_path / "data"
    shutil.copytree(built, copy, symlinks=True)
    return copy


def drop(data: Path, frame: pd.DataFrame, name: str) -> Path:
    (data / "incoming").mkdir(exist_ok=True)
    path = data / "incoming" / name
    frame.to_parquet(path)
    return path


def test_a_resent_batch_under_another_name_is_not_appended_twice(data):
    rows = len(events(data))
    content = drop(data, new_events(data, 50), "batch-a.parquet").read_bytes()
    assert run(data, INGEST).success
    assert len(events(data)) == rows + 50
    # The same 50 events again, under another name: a copy of the file, and a rewrite.
    (data / "incoming" / "batch-a-copy.parquet").write_bytes(content)
    result = run(data, INGEST)
    assert result.success and not failed_checks(result)
    assert len(events(data)) == rows + 50
    (kept,) = (data / "incoming" / "duplicates").glob("*/batch-a-copy.parquet")
    assert "first_ingested_in_batch" in (kept.parent / "report.json").read_text()
    rewritten = events(data).sort_values("event_timestamp").tail(50)
    drop(data, rewritten.sample(frac=1, random_state=0), "batch-a-rewritten.parquet")
    result = run(data, INGEST)
    assert result.success and len(events(data)) == rows + 50
    (meta,) = [m for m in result.get_asset_materialization_events()
               if m.asset_key.to_user_string() == "incoming_batch"]  # fmt: skip
    metadata = meta.materialization.metadata
    assert metadata["duplicate_events"].value == 50 and metadata["status"].value == "duplicate"
    assert_no_duplicate_events(data)
    # The next good batch goes in.
    drop(data, new_events(data, 5), "batch-b.parquet")
    assert run(data).success and len(events(data)) == rows + 55


def test_the_same_file_twice_and_a_partly_known_batch(data):
    rows = len(events(data))
    batch = new_events(data, 10)
    drop(data, batch, "same.parquet")
    assert run(data, INGEST).success
    drop(data, batch, "same.parquet")  # the same name and content, dropped again
    assert run(data, INGEST).success
    assert len(events(data)) == rows + 10
    assert list((data / "incoming" / "duplicates").glob("*/same.parquet"))
    # Two copies of one new file dropped together: taken once.
    twin = new_events(data, 4, offset_s=100)
    drop(data, twin, "twin-1.parquet")
    drop(data, twin, "twin-2.parquet")
    assert run(data, INGEST).success
    assert len(events(data)) == rows + 14
    assert list((data / "incoming" / "duplicates").glob("*/twin-2.parquet"))
    rows += 4
    # Half known, half new: the known events are dropped and counted, the new ones appended.
    mixed = pd.concat([batch.head(5), new_events(data, 5)], ignore_index=True)
    drop(data, mixed, "mixed.parquet")
    result = run(data, INGEST)
    assert result.success and len(events(data)) == rows + 15
    (report,) = (data / "incoming" / "processed").glob("*/mixed.parquet")
    counts = pd.read_json(report.parent / "report.json", typ="series")
    assert counts["duplicate_events"] == 5 and counts["new_events"] == 5
    assert_no_duplicate_events(data)


KILL_AT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import {module} as target
    original = getattr(target, {function!r})

    def killed(*args, **kwargs):
        if not ({when}):
            return original(*args, **kwargs)
        {before}
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(target, {function!r}, killed)
    from test_faults import run
    run(Path({data!r}), {selection!r})
""")


def run_killed(data: Path, module: str, function: str, selection, when: str = "True",
               before: str = "pass") -> None:  # fmt: skip
    """Run ``selection`` in a child process that SIGKILLs itself when ``module.function`` is
    called with arguments for which ``when`` holds (after running ``before`` there)."""
    script = KILL_AT.format(tests=str(Path(__file__).parent), module=module, function=function,
                            when=when, before=before, data=str(data), selection=selection)  # fmt: skip
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert child.returncode == -9, child.stderr[-3000:]


def test_killed_after_the_append_and_before_the_move(data):
    rows = len(events(data))
    drop(data, new_events(data, 20), "late-move.parquet")
    # `_finish` moves the batches out of accepted/ once the dataset is published.
    run_killed(data, "recsys.dataset", "_finish", INGEST, when="args[1]")  # batches to move
    assert len(events(data)) == rows + 20  # published with the batch...
    assert list((data / "incoming" / "accepted").glob("*.json"))  # ...but not moved
    result = run(data)
    assert result.success and not failed_checks(result)
    assert len(events(data)) == rows + 20  # not appended a second time
    assert not list((data / "incoming" / "accepted").glob("*"))
    assert_no_duplicate_events(data)


def test_killed_after_staging_and_before_the_files_moved(data):
    rows = len(events(data))
    drop(data, new_events(data, 20), "half-staged.parquet")
    # The accepted record is written, the files not yet moved out of incoming/.
    run_killed(data, "recsys.incoming", "_file_away", INGEST, when="'processed' in str(args[1])")
    assert (data / "incoming" / "half-staged.parquet").exists()
    assert run(data).success
    assert len(events(data)) == rows + 20
    assert not (data / "incoming" / "half-staged.parquet").exists()  # filed as a duplicate
    assert_no_duplicate_events(data)


FEATURES = "Path(args[1]).name == 'features'"


@pytest.mark.parametrize("moment", ["before the switch", "after the switch"])
def test_killed_while_features_are_published(data, moment):
    before = published(data, "features")
    manifest = (data / "features" / "manifest.json").read_text()
    drop(data, new_events(data, 30), "with-features.parquet")
    if moment == "before the switch":
        # publish_dir has renamed the staged tables into place, not yet switched the link.
        run_killed(data, "recsys.audit", "publish_dir", DATA_SIDE, when=FEATURES,
                   before="os.rename(args[0], args[1].parent / '.features.versions' / 'orphan')")  # fmt: skip
        assert published(data, "features") == before
        assert (data / "features" / "manifest.json").read_text() == manifest
    else:
        run_killed(data, "recsys.audit", "publish_dir", DATA_SIDE, when=FEATURES,
                   before="original(*args, **kwargs)")  # fmt: skip
        assert published(data, "features") != before  # the switch happened whole
    result = run(data)
    assert result.success and not failed_checks(result)
    # The features now describe the published dataset, whatever the kill left.
    from recsys.io import read_json

    assert read_json(data / "features" / "manifest.json")["dataset_version"] == published(
        data, "dataset"
    )
    assert_no_duplicate_events(data)
    versions = list((data / ".features.versions").iterdir())
    assert len(versions) == 1  # the orphan of the killed run was cleaned up


def test_a_failing_dataset_check_leaves_the_published_dataset_untouched(data):
    before, rows = published(data, "dataset"), len(events(data))
    # Each event passes the batch checks, but together they make one user most of the
    # dataset: the dataset-level check "most active user's share" fails.
    items = pd.read_parquet(data / "dataset" / "items.parquet").item_id.to_numpy()
    n = rows + 1_000
    start = events(data).event_timestamp.max()
    flood = pd.DataFrame({
        "user_id": events(data).user_id.iloc[0], "item_id": items[[i % len(items) for i in range(n)]],
        "rating": 4.0, "event_timestamp": start + pd.to_timedelta(range(1, n + 1), unit="s"),
    })  # fmt: skip
    drop(data, flood, "flood.parquet")
    result = run(data, DATA_SIDE)
    assert "interactions_valid" in failed_checks(result)
    assert "features" not in {e.asset_key.to_user_string()
                              for e in result.get_asset_materialization_events()}  # fmt: skip
    assert published(data, "dataset") == before and len(events(data)) == rows
    (rejected,) = (data / "incoming" / "rejected").glob("*/flood.parquet")
    assert (rejected.parent / "dataset_report.json").exists()
    (kept,) = (data / "rejected").glob("dataset-*")
    assert len(pd.read_parquet(kept / "interactions.parquet")) == rows + n  # kept, not lost
    # Unblocked: the next run publishes the next good batch.
    drop(data, new_events(data, 5), "after-flood.parquet")
    result = run(data)
    assert result.success and not failed_checks(result)
    assert len(events(data)) == rows + 5


def test_retrain_rechecks_its_inputs(data):
    """Features computed from another dataset version than the published one: the training
    set refuses to read them (what a `retrain` run would otherwise train on)."""
    from recsys.io import atomic_write_json, read_json

    manifest = data / "features" / "manifest.json"
    atomic_write_json(manifest, {**read_json(manifest), "dataset_version": "an-older-one"})
    result = run(data, ["feast_registry", "training_set"])
    assert "features_from_the_published_dataset" in failed_checks(result)
    assert not (data / "training").exists()
