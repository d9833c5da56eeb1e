"""The data folder's writer lock (recsys.lock): one writer at a time across processes, the
holder named, a dead holder's lock taken over, re-entrant within a process."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from recsys.lock import DataFolderLocked, holder, writer_lock

HOLD = textwrap.dedent("""
    import sys, time
    from recsys.lock import writer_lock
    with writer_lock(sys.argv[1], owner="test holder"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _hold(data: Path, seconds: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(data), str(seconds)],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_second_writer_fails_naming_the_holder(tmp_path):
    child = _hold(tmp_path, 30)
    try:
        record = holder(tmp_path)
        assert record is not None and record["owner"] == "test holder"
        assert record["pid"] == child.pid
        with pytest.raises(DataFolderLocked) as error, writer_lock(tmp_path, owner="second"):
            pass
        message = str(error.value)
        assert "test holder" in message and f"pid {child.pid}" in message
    finally:
        child.kill()
        child.wait()


def test_a_writer_waits_for_the_holder_to_finish(tmp_path):
    child = _hold(tmp_path, 1.0)
    start = time.monotonic()
    with writer_lock(tmp_path, owner="patient", wait_seconds=30) as record:
        assert record["owner"] == "patient" and record["pid"] == os.getpid()
        assert time.monotonic() - start > 0.3  # it did wait for the holder
    child.wait()
    assert holder(tmp_path) is None


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    child = _hold(tmp_path, 60)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert holder(tmp_path) is None  # the kernel released it; the record is stale
    with writer_lock(tmp_path, owner="next") as record:
        assert record["took_over"]["pid"] == child.pid  # what the dead holder left


def test_reentrant_within_a_process_and_released_by_the_outermost(tmp_path):
    with writer_lock(tmp_path, owner="outer"):
        with writer_lock(tmp_path, owner="inner") as inner:
            assert inner["owner"] == "outer"
        assert holder(tmp_path)["owner"] == "outer"  # still held after the inner block
        out = subprocess.run(
            [sys.executable, "-c", f"from recsys.lock import holder; print(holder({str(tmp_path)!r}))"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "outer" in out.stdout  # another process sees it held
    assert holder(tmp_path) is None


def test_sensor_skips_while_a_run_holds_the_lock(tmp_path, monkeypatch):
    from dagster import RunRequest, SkipReason, build_sensor_context

    from orchestration.definitions import incoming_batches

    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "a.parquet").write_bytes(b"x")
    child = _hold(tmp_path, 30)
    try:
        skipped = incoming_batches(build_sensor_context())
        assert isinstance(skipped, SkipReason)
        assert "test holder" in str(skipped.skip_message)
    finally:
        child.kill()
        child.wait()
    assert isinstance(incoming_batches(build_sensor_context()), RunRequest)
