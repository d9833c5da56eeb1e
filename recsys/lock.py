"""One writer at a time on a data folder: an exclusive lock held by every writing run.

The lock is ``fcntl.flock`` on ``<data>/.lock``: the kernel releases it when its holder's
process ends, however it ends (SIGKILL included), so a lock left by a dead process is
simply taken over by the next writer; no one has to delete a file by hand. The file also
holds who has it (owner, pid, host, start time) so a second writer can say whom it waits
for. Within one process the lock is re-entrant (a Dagster run's resources and the CLI
around it may both ask for it): it is released when the outermost holder lets go.

Readers (serving, the sensor) never take it; the sensor only asks whether it is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
_POLL_SECONDS = 0.2
# Re-entrancy within this process: lock file path → [file descriptor, depth].
_HELD: dict[str, list[int]] = {}
_GUARD = threading.Lock()


class DataFolderLocked(RuntimeError):
    """Another process holds the data folder's writer lock."""

    def __init__(self, data_dir: Path, holder: dict[str, Any] | None, waited: float) -> None:
        self.data_dir = data_dir
        self.holder = holder or {}
        who = describe(self.holder)
        super().__init__(
            f"the data folder {data_dir} is being written by {who}; "
            + (f"waited {waited:.0f} s; " if waited else "")
            + "try again when it has finished (or pass a wait time, e.g. `--wait 600`)"
        )


def describe(holder: dict[str, Any] | None) -> str:
    """``"recsys pipeline (pid 123 on host, since 2026-11-30T12:00:00+00:00)"``."""
    if not holder:
        return "another process (no owner recorded)"
    return (
        f"{holder.get('owner', 'another process')} (pid {holder.get('pid')} on "
        f"{holder.get('host')}, since {holder.get('started_at')})"
    )


def _path(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / LOCK_FILE


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        value = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def holder(data_dir: Path) -> dict[str, Any] | None:
    """Who holds the lock now, or None when no live process does (a stale record from a
    dead process counts as free)."""
    path = _path(data_dir)
    if not path.exists():
        return None
    with _GUARD:
        if str(path) in _HELD:
            return _read(_HELD[str(path)][0])
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"owner": "another process"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def writer_lock(data_dir: Path, owner: str, wait_seconds: float = 0.0) -> Iterator[dict[str, Any]]:
    """Hold the data folder's writer lock for the block; yields the holder record.

    Waits up to ``wait_seconds`` for another writer to finish, then raises
    :class:`DataFolderLocked` naming it. A record left by a dead process is taken over.
    """
    path = _path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            reentered: int | None = _HELD[key][0]
        else:
            reentered = None
    if reentered is not None:
        try:
            yield _read(reentered) or {}
        finally:
            _release(key)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= wait_seconds:
                    raise DataFolderLocked(path.parent, _read(fd), waited) from None
                time.sleep(_POLL_SECONDS)
    except BaseException:
        os.close(fd)
        raise
    record = {
        "owner": owner,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "took_over": _read(fd),  # what a dead holder left, if anything
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    os.fsync(fd)
    with _GUARD:
        _HELD[key] = [fd, 1]
    try:
        yield record
    finally:
        _release(key)


def _release(key: str) -> None:
    with _GUARD:
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
    fd = entry[0]
    # The record stays readable for post-mortems, but says the lock is free.
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
