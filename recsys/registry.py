"""Model registry: every training run is a version; exactly one version is "current".

Layout under ``<data>/models``::

    versions/<version>/        a complete version: checkpoint.pt, user_tower.onnx (the
                               user tower as served: towers.export), metrics.json,
                               candidates.parquet, version.json (fingerprint, state, ...)
    .staging/<version>/        a version being built (a killed run leaves it here; the next
                               run deletes it)
    current.json               {"version": ..., "promoted_at": ...}: the one switch serving
                               and the pipeline read
    promotions.jsonl           every switch, appended (who was current before, and why)

The item embeddings of a version live in LanceDB (``recsys.vectors``, table
``items_<version>``) beside it. A version id is ``<UTC time>-<fingerprint[:8]>``: only
``[0-9A-Za-z_-]``, so it is safe as a file and table name. The fingerprint hashes what the
model was trained from (training-set summary, dataset manifest, config), so a second run on
unchanged data finds its version instead of training a new one (unless forced).

States: ``staged`` (trained, passed its quality gate, waiting for promotion), ``rejected``
(failed the gate: kept for inspection, never promoted), ``current``/``retired``. Promotion
writes ``current.json`` with one ``os.replace``: readers see the old version or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.io import atomic_write_json, read_json

VERSION_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (what a model version was trained from)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"invalid model version {version!r}: expected [0-9A-Za-z_-]{{1,64}}")
    return version


class ModelRegistry:
    """Versions of the two-tower model in a folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_root = self.root / ".staging"

    # --- reading ------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        return self.versions_dir / check_version(version)

    def info(self, version: str) -> dict[str, Any]:
        return dict(read_json(self.path(version) / "version.json"))

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / "version.json").exists())

    def current(self) -> str | None:
        pointer = self.root / "current.json"
        return str(read_json(pointer)["version"]) if pointer.exists() else None

    def find(self, print_: str) -> str | None:
        """The newest complete, not rejected version trained from this fingerprint."""
        for version in reversed(self.versions()):
            info = self.info(version)
            if info.get("fingerprint") == print_ and info.get("state") != "rejected":
                return version
        return None

    def metrics(self, version: str) -> dict[str, Any]:
        path = self.path(version) / "metrics.json"
        return dict(read_json(path)) if path.exists() else {}

    def latest_staged(self) -> str | None:
        staged = [v for v in self.versions() if self.info(v).get("state") == "staged"]
        return staged[-1] if staged else None

    # --- writing ------------------------------------------------------------------------
    def new_version(self, print_: str, now: datetime | None = None) -> str:
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
        return check_version(f"{stamp}-{print_[:8]}")

    @contextlib.contextmanager
    def build(self, version: str, info: dict[str, Any]) -> Iterator[Path]:
        """A staging folder for ``version``; moved to ``versions/`` in one rename when the
        block completes, deleted if it raises. ``info`` becomes ``version.json``."""
        check_version(version)
        staging = self.staging_root / version
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            yield staging
            atomic_write_json(staging / "version.json", {"version": version, **info})
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, self.versions_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def set_state(self, version: str, state: str, **extra: Any) -> None:
        info = self.info(version)
        info.update(state=state, **extra)
        atomic_write_json(self.path(version) / "version.json", info)

    def promote(self, version: str, reason: str = "") -> str | None:
        """Make ``version`` current in one atomic switch; returns the previous current."""
        info = self.info(version)  # raises if the version is not complete
        if info.get("state") == "rejected":
            raise ValueError(f"version {version} failed its quality gate and cannot be promoted")
        previous = self.current()
        now = datetime.now(UTC).isoformat()
        atomic_write_json(self.root / "current.json", {"version": version, "promoted_at": now})
        self.set_state(version, "current", promoted_at=now)
        if previous and previous != version and (self.path(previous) / "version.json").exists():
            self.set_state(previous, "retired")
        with (self.root / "promotions.jsonl").open("a") as log:
            log.write(json.dumps({"version": version, "previous": previous, "at": now,
                                  "reason": reason}) + "\n")  # fmt: skip
        return previous

    def clean_staging(self) -> list[str]:
        """Delete what killed runs left in ``.staging``; returns the version ids removed."""
        if not self.staging_root.exists():
            return []
        removed = [p.name for p in self.staging_root.iterdir()]
        shutil.rmtree(self.staging_root, ignore_errors=True)
        return removed
