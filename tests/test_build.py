"""`recsys build` (recsys.pipeline.build) keeps what was appended: the source is ingested
only the first time, new batches are staged and appended as the Dagster assets do, and the
build holds the data folder's writer lock."""

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from recsys.lock import DataFolderLocked, writer_lock
from recsys.pipeline import build
from recsys.settings import Settings

SETTINGS = {"dataset": "synthetic", "synthetic_interactions": 5_000, "synthetic_seed": 3}


def test_build_keeps_appended_batches(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", **SETTINGS)
    first = build(settings, materialize_online=False)
    events = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    assert first.dataset.interactions == len(events)
    batch = events.sort_values("event_timestamp").tail(7).reset_index(drop=True)
    batch["event_timestamp"] = events.event_timestamp.max() + pd.to_timedelta(range(1, 8), "s")
    settings.paths.incoming.mkdir(parents=True)
    batch.to_parquet(settings.paths.incoming / "new.parquet")

    second = build(settings, materialize_online=False)
    assert second.dataset.interactions == len(events) + 7
    third = build(settings, materialize_online=False)  # the source is not ingested again
    assert third.dataset.interactions == len(events) + 7
    rows = pd.read_parquet(settings.paths.training / "training_set.parquet")
    assert len(rows) == len(events) + 7  # the training set sees the appended events


def test_build_refuses_while_another_writer_holds_the_folder(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", **SETTINGS)
    with writer_lock(settings.data_dir, owner="someone else"):
        pass  # the record of a finished holder does not block
    hold = textwrap.dedent(f"""
        import time
        from recsys.lock import writer_lock
        with writer_lock({str(settings.data_dir)!r}, owner="recsys pipeline"):
            print("held", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(DataFolderLocked, match="recsys pipeline"):
            build(settings, materialize_online=False)
        assert not settings.paths.dataset.exists()  # nothing was written
    finally:
        child.kill()
        child.wait()
