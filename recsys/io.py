"""Atomic publication of folders and files: nothing half-written is ever visible.

Work happens in a staging folder inside the data folder (same filesystem, so renames are
atomic). A finished folder is published by pointing a symlink at it with one ``os.replace``;
readers see either the old folder or the new one, never a mix. A failure removes the staging
folder, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def staging_dir(data_dir: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder under ``data_dir/.staging``; removed on exit unless it was published."""
    root = Path(data_dir) / ".staging"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{prefix}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish_dir(staging: Path, target: Path) -> Path:
    """Move ``staging`` into place as ``target`` in one atomic switch; returns the real folder.

    ``target`` becomes a symlink to ``.<name>.versions/<id>`` beside it. The previous version
    is deleted after the switch: anything that opened it keeps its open files (POSIX).
    """
    target = Path(target)
    if target.exists() and not target.is_symlink():
        raise FileExistsError(
            f"{target} is a real folder, not one published by this pipeline; move it away"
        )
    versions = target.parent / f".{target.name}.versions"
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / uuid.uuid4().hex[:12]
    os.rename(staging, final)
    link = target.parent / f".{target.name}.link-{final.name}"
    link.symlink_to(final.relative_to(target.parent))
    os.replace(link, target)
    for old in versions.iterdir():
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
