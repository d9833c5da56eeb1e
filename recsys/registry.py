"""Model registry: every training run makes a version; a state machine says what each one is.

Layout under ``<data>/models``::

    versions/<version>/   a complete version, written once and then read-only: checkpoint.pt,
                          user_tower.onnx (the tower as served: towers.export), metrics.json/.md,
                          plots, candidates.parquet (added by the run that built it, once),
                          version.json (fingerprint, the building run, creation time)
    .staging/<version>/   a version being built; ``.owner`` names the run building it
    states/<version>.json the version's mutable state: the builder's run id, the state and
                          the history of its transitions (time, run id, reason)
    registry.jsonl        every transition and deletion of every version, appended
    current.json          {"version", "promoted_at", "previous"}: the one switch serving reads
    promotions.jsonl      every switch of current.json, appended

States (``TRANSITIONS``)::

    staged ──▶ gated ──▶ embedded ──▶ promoted ──▶ retired ──(rollback)──▶ promoted
       └──────────┴──────────┴──▶ rejected   (failed gate, or abandoned: its run died)

A version is a two-tower model (checkpoint.pt served, checkpoint_eval.pt evaluated), or
(``"kind": "fallback"`` in version.json) the best servable baseline promoted when no
two-tower passed the quality gate (``recsys.fallback``): same states, same rules; its folder
holds ranking.parquet instead of the checkpoints and user_tower.onnx.

Only the run that built a version moves it forward and promotes it, so a version left by a
killed run is never promoted by a later one: the next training run rejects it as abandoned.
Item vectors live in LanceDB (``recsys.index``, table ``items_<version>``); old versions go
with their tables (``recsys.retention``). A version id, ``<UTC time>-<fingerprint[:8]>``, is
safe as a file and table name, and sorting ids sorts versions by creation.

With an artifact store (``recsys.objectstore``), every switch of current.json is also put on
the store, after the local one, and only to a version published there whole (manifest and
item table): replicas on other hosts follow the store's pointer. The states stay local.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.io import atomic_write_json, read_json

if TYPE_CHECKING:
    from recsys.objectstore import ArtifactStore

VERSION_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")

STAGED, GATED, EMBEDDED, PROMOTED = "staged", "gated", "embedded", "promoted"
REJECTED, RETIRED = "rejected", "retired"
# Allowed moves; anything else raises TransitionError. retired -> promoted only by rollback().
TRANSITIONS: dict[str, frozenset[str]] = {
    STAGED: frozenset({GATED, REJECTED}),
    GATED: frozenset({EMBEDDED, REJECTED}),
    EMBEDDED: frozenset({PROMOTED, REJECTED}),
    PROMOTED: frozenset({RETIRED}),
    RETIRED: frozenset(),
    REJECTED: frozenset(),
}
UNFINISHED = (STAGED, GATED, EMBEDDED)  # a run is still (or was, if it died) working on it
# A version without a state file may carry its state in version.json, in these words.
LEGACY_STATES = {"training": STAGED, "staged": GATED, "current": PROMOTED}


class TransitionError(ValueError):
    """A state change the registry does not allow (wrong state, or another run's version)."""


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (what a model version was trained from)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"invalid model version {version!r}: expected [0-9A-Za-z_-]{{1,64}}")
    return version


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _read_only(folder: Path) -> None:
    """Every file under ``folder`` read-only: a version's artifacts never change."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class ModelRegistry:
    """Versions of the two-tower model in a folder (see the module docstring)."""

    def __init__(self, root: Path, store: ArtifactStore | None = None) -> None:
        self.root = Path(root)
        self.store = store  # where switches are published too (None: local only)
        self.versions_dir = self.root / "versions"
        self.staging_root = self.root / ".staging"
        self.states_dir = self.root / "states"
        self.log_path = self.root / "registry.jsonl"

    # --- reading ------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        return self.versions_dir / check_version(version)

    def record(self, version: str) -> dict[str, Any] | None:
        """The version's state file: {"version", "state", "run_id", "history"}, or None."""
        path = self.states_dir / f"{check_version(version)}.json"
        if path.exists():
            return dict(read_json(path))
        legacy = self.path(version) / "version.json"
        if legacy.exists() and "state" in (info := read_json(legacy)):
            state = LEGACY_STATES.get(info["state"], info["state"])
            return {"version": version, "state": state, "run_id": None, "history": []}
        return None

    def state(self, version: str) -> str | None:
        record = self.record(version)
        return None if record is None else str(record["state"])

    def info(self, version: str) -> dict[str, Any]:
        """version.json of a complete version, with its current ``state``."""
        info = dict(read_json(self.path(version) / "version.json"))
        info["state"] = self.state(version)
        return info

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / "version.json").exists())

    def recorded(self) -> list[str]:
        """Every version with a state file, complete or not, oldest first."""
        if not self.states_dir.exists():
            return []
        return sorted(p.stem for p in self.states_dir.glob("*.json"))

    def current(self) -> str | None:
        pointer = self.root / "current.json"
        return str(read_json(pointer)["version"]) if pointer.exists() else None

    def previous(self) -> str | None:
        """The version that was current before the current one (a rollback target)."""
        pointer = self.root / "current.json"
        previous = read_json(pointer).get("previous") if pointer.exists() else None
        return str(previous) if previous else None

    def find(self, print_: str) -> str | None:
        """The current version if it was trained from this fingerprint: only the current
        one is ever reused (a rejected, abandoned or retired one never is)."""
        current = self.current()
        if current and read_json(self.path(current) / "version.json").get("fingerprint") == print_:
            return current
        return None

    def gate_reason(self, version: str) -> str | None:
        """Why ``version`` was moved to ``gated`` (its quality gate's verdict), if it was."""
        record = self.record(version) or {}
        reasons = [e["reason"] for e in record.get("history", []) if e.get("to") == GATED]
        return str(reasons[-1]) if reasons else None

    def metrics(self, version: str) -> dict[str, Any]:
        path = self.path(version) / "metrics.json"
        return dict(read_json(path)) if path.exists() else {}

    def built_by(self, run_id: str, state: str | None = None) -> str | None:
        """The newest complete version built by ``run_id`` (in ``state``, if given)."""
        for version in reversed(self.versions()):
            record = self.record(version)
            if record and record.get("run_id") == run_id and state in (None, record["state"]):
                return version
        return None

    # --- writing ------------------------------------------------------------------------
    def new_version(self, print_: str, now: datetime | None = None) -> str:
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
        return check_version(f"{stamp}-{print_[:8]}")

    def _log(self, entry: dict[str, Any], path: Path | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (path or self.log_path).open("a") as log:
            log.write(json.dumps(entry, sort_keys=True) + "\n")

    def _write_state(self, version: str, state: str, run_id: str, reason: str,
                     builder: str | None, before: str | None) -> None:  # fmt: skip
        record = self.record(version) or {"version": version, "run_id": builder, "history": []}
        entry = {"version": version, "from": before, "to": state, "at": _now(),
                 "run_id": run_id, "reason": reason}  # fmt: skip
        record["state"] = state
        record["history"] = [*record.get("history", []), entry]
        atomic_write_json(self.states_dir / f"{version}.json", record)
        self._log(entry)

    @contextlib.contextmanager
    def build(self, version: str, run_id: str, info: dict[str, Any],
              reason: str = "trained") -> Iterator[Path]:  # fmt: skip
        """A staging folder for ``version`` owned by ``run_id``; when the block completes,
        ``info`` becomes version.json, the files turn read-only, the version is recorded
        ``staged`` (with ``reason``) and the folder moves to ``versions/`` in one rename.
        Deleted if it raises."""
        check_version(version)
        if self.record(version) is not None or self.path(version).exists():
            raise TransitionError(f"version {version} already exists: versions are written once")
        staging = self.staging_root / version
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / ".owner").write_text(run_id)
        try:
            yield staging
            (staging / ".owner").unlink()
            atomic_write_json(staging / "version.json",
                              {**info, "version": version, "run_id": run_id, "created_at": _now()})  # fmt: skip
            _read_only(staging)
            # Recorded before the rename: a run killed in between leaves a staged record,
            # which the next run rejects as abandoned, and a staging folder it deletes.
            self._write_state(version, STAGED, run_id, reason, builder=run_id, before=None)
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            os.rename(staging, self.versions_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def transition(self, version: str, to: str, run_id: str, reason: str) -> None:
        """Move ``version`` to state ``to``; raises TransitionError if the move is not allowed
        or (for every move but a rejection) ``run_id`` did not build the version."""
        record = self.record(version)
        before = None if record is None else record["state"]
        if before is None or to not in TRANSITIONS.get(before, frozenset()):
            raise TransitionError(f"version {version}: {before} -> {to} is not allowed "
                                  f"(allowed from {before}: {sorted(TRANSITIONS.get(before or '', ()))})")  # fmt: skip
        forward = to in (GATED, EMBEDDED, PROMOTED)
        if forward and record is not None and record.get("run_id") != run_id:
            raise TransitionError(f"version {version}: {before} -> {to} refused: built by run "
                                  f"{record.get('run_id')}, not by run {run_id}")  # fmt: skip
        self._write_state(version, to, run_id, reason, builder=None, before=before)

    @contextlib.contextmanager
    def add_artifact(self, version: str, run_id: str, name: str) -> Iterator[Path]:
        """A temporary path for a file the building run adds to its ``gated`` version (e.g.
        its candidates); renamed to ``name`` in the version's folder, read-only, when the
        block completes. Refuses another run's version, a later state, an existing file."""
        record = self.record(version)
        target = self.path(version) / name
        if record is None or record.get("run_id") != run_id or record["state"] != GATED:
            raise TransitionError(f"version {version}: run {run_id} cannot add {name} (state "
                                  f"{record and record['state']}, built by {record and record.get('run_id')})")  # fmt: skip
        if target.exists():
            raise TransitionError(f"version {version}: {name} exists; artifacts are written once")
        tmp = target.with_name(f".{name}.tmp")
        try:
            yield tmp
            tmp.chmod(0o444)
            os.rename(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _switch(self, version: str, run_id: str, reason: str, before: str) -> str | None:
        """current.json first (the switch itself), then the states that follow from it; a
        run killed in between is reconciled by the next run (``abandon_unfinished``)."""
        previous, now = self.current(), _now()
        pointer = {"version": version, "promoted_at": now, "previous": previous}
        if self.store is not None:  # refused before anything moves when it is not there
            self.store.check_publishable(version)
        atomic_write_json(self.root / "current.json", pointer)
        if self.store is not None:
            self.store.write_pointer(pointer)
        self._write_state(version, PROMOTED, run_id, reason, builder=None, before=before)
        if previous and previous != version and self.state(previous) == PROMOTED:
            self.transition(previous, RETIRED, run_id, f"replaced by {version}")
        self._log({"version": version, "previous": previous, "at": now, "run_id": run_id,
                   "reason": reason}, self.root / "promotions.jsonl")  # fmt: skip
        return previous

    def promote(self, version: str, run_id: str, reason: str = "") -> str | None:
        """Make ``version`` current in one atomic switch (current.json) and retire the
        previous current; only an ``embedded`` version built by ``run_id``. Returns the
        previous current."""
        state, record = self.state(version), self.record(version)
        if state != EMBEDDED or record is None or record.get("run_id") != run_id:
            raise TransitionError(f"version {version} cannot be promoted by run {run_id}: state "
                                  f"{state} (needs {EMBEDDED}), built by run "
                                  f"{record and record.get('run_id')}")  # fmt: skip
        return self._switch(version, run_id, reason, EMBEDDED)

    def rollback(self, version: str, run_id: str, reason: str) -> str | None:
        """Make a ``retired`` version current again (an operator's decision, never the
        pipeline's); the current one is retired. Returns the previous current."""
        if self.state(version) != RETIRED:
            raise TransitionError(f"version {version}: rollback needs a retired version, it is "
                                  f"{self.state(version)}")  # fmt: skip
        if not (self.path(version) / "version.json").exists():
            raise TransitionError(f"version {version}: no complete folder to roll back to")
        return self._switch(version, run_id, f"rollback: {reason}", RETIRED)

    def abandon_unfinished(self, run_id: str) -> list[str]:
        """Reject every staged, gated or embedded version of another run: at most one
        writing run at a time, so those runs ended before promoting them. Returns them.

        First the states follow current.json, the one switch, where a run died during
        ``_switch``: the version it names is promoted, any other promoted one retired."""
        current = self.current()
        for version in self.recorded():
            state = self.state(version)
            if version == current and state != PROMOTED:
                self._write_state(version, PROMOTED, run_id, "current.json names it: its run "
                                  "died after the switch", builder=None, before=state)  # fmt: skip
            elif version != current and state == PROMOTED:
                self.transition(version, RETIRED, run_id, "current.json names another version")
        abandoned = []
        for version in self.recorded():
            record = self.record(version)
            if record and record["state"] in UNFINISHED and record.get("run_id") != run_id:
                self.transition(version, REJECTED, run_id, f"abandoned: run "
                                f"{record.get('run_id')} ended before promotion")  # fmt: skip
                abandoned.append(version)
        return abandoned

    def clean_staging(self, run_id: str) -> list[str]:
        """Delete the staging folders not owned by ``run_id`` (left by killed runs)."""
        if not self.staging_root.exists():
            return []
        removed = []
        for folder in sorted(self.staging_root.iterdir()):
            owner = folder / ".owner"
            if owner.exists() and owner.read_text() == run_id:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        return removed

    def forget(self, version: str, reason: str) -> None:
        """Delete a version's folder and state file (retention); logged in registry.jsonl."""
        shutil.rmtree(self.path(version), ignore_errors=True)
        (self.states_dir / f"{version}.json").unlink(missing_ok=True)
        self._log({"version": version, "deleted": True, "at": _now(), "reason": reason})
