"""The model registry as a state machine (recsys.registry) and retention (recsys.retention),
on tmp folders with tiny files and a real LanceDB folder: every allowed and forbidden
transition, promotion only of this run's embedded version, abandoned versions never
promoted, staging cleanup by owner, immutable artifacts, retention of current, previous and
the last N versions with their vector tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from recsys.index.hnsw import HNSW_DIR
from recsys.index.table import list_versions, write_item_table
from recsys.registry import (
    EMBEDDED,
    GATED,
    PROMOTED,
    REJECTED,
    RETIRED,
    STAGED,
    TRANSITIONS,
    ModelRegistry,
    TransitionError,
)
from recsys.retention import apply_retention

RUN = "run-a"
ALL_STATES = (STAGED, GATED, EMBEDDED, PROMOTED, REJECTED, RETIRED)
START = datetime(2026, 1, 1, tzinfo=UTC)


def build(reg: ModelRegistry, run_id: str = RUN, n: int = 0, tag: str = "") -> str:
    """A complete version with a tiny checkpoint stand-in, recorded as staged."""
    version = reg.new_version(f"{tag or 'f'}{n:07d}", now=START + timedelta(minutes=n))
    with reg.build(version, run_id, {"fingerprint": f"print-{n}"}) as folder:
        (folder / "checkpoint.pt").write_bytes(b"weights")
        (folder / "metrics.json").write_text("{}")
    return version


def advance(reg: ModelRegistry, version: str, to: str, run_id: str = RUN) -> None:
    """Walk ``version`` along the happy path up to ``to`` (promotion through promote)."""
    path = {GATED: [GATED], EMBEDDED: [GATED, EMBEDDED], PROMOTED: [GATED, EMBEDDED]}
    for state in path.get(to, []):
        reg.transition(version, state, run_id, "test")
    if to == PROMOTED:
        reg.promote(version, run_id, "test")


def in_state(reg: ModelRegistry, state: str, n: int = 0) -> str:
    """A version in ``state`` reached by allowed moves only."""
    if state == RETIRED:
        old = build(reg, n=n)
        advance(reg, old, PROMOTED)
        advance(reg, build(reg, n=n + 1), PROMOTED)
        return old
    version = build(reg, n=n)
    if state == REJECTED:
        reg.transition(version, REJECTED, RUN, "gate failed")
    else:
        advance(reg, version, state)
    return version


@pytest.mark.parametrize("start", ALL_STATES)
@pytest.mark.parametrize("to", ALL_STATES)
def test_every_transition_is_allowed_or_refused_as_the_table_says(tmp_path, start, to):
    reg = ModelRegistry(tmp_path / "models")
    version = in_state(reg, start)
    assert reg.state(version) == start
    if to in TRANSITIONS[start]:
        reg.transition(version, to, RUN, "test move")
        assert reg.state(version) == to
        last = reg.record(version)["history"][-1]  # type: ignore[index]
        assert (last["from"], last["to"], last["run_id"], last["reason"]) == (
            start, to, RUN, "test move")  # fmt: skip
    else:
        with pytest.raises(TransitionError, match=rf"{version}: {start} -> {to} is not allowed"):
            reg.transition(version, to, RUN, "test move")
        assert reg.state(version) == start


def test_every_transition_is_logged_with_time_run_and_reason(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    version = in_state(reg, PROMOTED)
    history = reg.record(version)["history"]  # type: ignore[index]
    assert [(h["from"], h["to"]) for h in history] == [
        (None, STAGED), (STAGED, GATED), (GATED, EMBEDDED), (EMBEDDED, PROMOTED)]  # fmt: skip
    assert all(h["run_id"] == RUN and h["at"] and h["reason"] for h in history)
    log = [json.loads(line) for line in reg.log_path.read_text().splitlines()]
    assert [e["to"] for e in log] == [STAGED, GATED, EMBEDDED, PROMOTED]
    assert reg.info(version)["state"] == PROMOTED  # what serving reads


def test_promote_refuses_another_runs_version_and_a_not_embedded_one(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    version = build(reg)
    with pytest.raises(TransitionError, match="built by run run-a, not by run run-b"):
        reg.transition(version, GATED, "run-b", "someone else's gate")
    reg.transition(version, GATED, RUN, "gate passed")
    with pytest.raises(TransitionError, match=f"{version} cannot be promoted by run run-a: "
                       "state gated"):  # fmt: skip
        reg.promote(version, RUN)
    reg.transition(version, EMBEDDED, RUN, "vectors written")
    with pytest.raises(TransitionError, match="built by run run-a"):
        reg.promote(version, "run-b")
    assert reg.current() is None and not (reg.root / "current.json").exists()
    assert reg.promote(version, RUN) is None
    assert reg.current() == version and reg.state(version) == PROMOTED


def test_promotion_retires_the_previous_and_rollback_restores_it(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    first = in_state(reg, PROMOTED, n=0)
    second = build(reg, "run-b", n=1)
    advance(reg, second, EMBEDDED, "run-b")
    assert reg.promote(second, "run-b") == first
    assert reg.current() == second and reg.previous() == first
    assert (reg.state(first), reg.state(second)) == (RETIRED, PROMOTED)
    promotions = [json.loads(x) for x in (reg.root / "promotions.jsonl").read_text().splitlines()]
    assert [(p["version"], p["previous"]) for p in promotions] == [(first, None), (second, first)]
    with pytest.raises(TransitionError, match="rollback needs a retired version"):
        reg.rollback(second, "operator", "not retired")
    assert reg.rollback(first, "operator", "bad answers") == second
    assert (reg.current(), reg.state(first), reg.state(second)) == (first, PROMOTED, RETIRED)


def test_abandoned_versions_are_rejected_and_never_promoted(tmp_path):
    """The issue's bug: a version gated by a run that died stays staged, and after a newer
    version is promoted a later run embedded and promoted it without a new gate."""
    reg = ModelRegistry(tmp_path / "models")
    dead_staged, dead_gated, dead_embedded = (build(reg, "dead", n=n) for n in range(3))
    advance(reg, dead_gated, GATED, "dead")
    advance(reg, dead_embedded, EMBEDDED, "dead")
    assert reg.abandon_unfinished("run-b") == [dead_staged, dead_gated, dead_embedded]
    for version in (dead_staged, dead_gated, dead_embedded):
        assert reg.state(version) == REJECTED
        reason = reg.record(version)["history"][-1]["reason"]  # type: ignore[index]
        assert reason == "abandoned: run dead ended before promotion"
        for run in ("dead", "run-b"):
            with pytest.raises(TransitionError):
                reg.promote(version, run)
    newer = build(reg, "run-b", n=3)
    advance(reg, newer, PROMOTED, "run-b")
    assert reg.built_by("run-c", GATED) is None and reg.built_by("dead", GATED) is None
    assert reg.abandon_unfinished("run-c") == []  # a promoted version is not unfinished
    assert reg.current() == newer


def test_the_running_run_keeps_its_own_unfinished_version(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    mine = build(reg, RUN)
    reg.transition(mine, GATED, RUN, "gate passed")
    assert reg.abandon_unfinished(RUN) == [] and reg.built_by(RUN, GATED) == mine


def test_find_reuses_only_the_current_version(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    rejected = build(reg, n=0)
    reg.transition(rejected, REJECTED, RUN, "gate failed")
    assert reg.find("print-0") is None  # rejected: never reused
    current = in_state(reg, PROMOTED, n=1)
    assert reg.find("print-1") == current
    newer = build(reg, "run-b", n=2)
    advance(reg, newer, PROMOTED, "run-b")
    assert reg.find("print-1") is None  # retired now: train again rather than revive it


def test_clean_staging_keeps_this_runs_folder(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    mine = reg.new_version("mine0000")
    with reg.build(mine, RUN, {}) as folder:
        (folder / "checkpoint.pt").write_bytes(b"half")
        killed = reg.staging_root / "20250101T000000000000-killed00"
        killed.mkdir()
        (killed / ".owner").write_text("dead-run")
        (killed / "checkpoint.pt").write_bytes(b"half")
        no_owner = reg.staging_root / "20250101T000000000000-noowner0"
        no_owner.mkdir()
        assert reg.clean_staging(RUN) == [killed.name, no_owner.name]
        assert folder.exists() and not killed.exists() and not no_owner.exists()
    assert reg.versions() == [mine]


def test_a_version_is_written_once(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    version = build(reg)
    checkpoint = reg.path(version) / "checkpoint.pt"
    # Read-only files (root, as in CI containers, may still write them: the registry's own
    # checks below are what refuse a second write).
    assert all(p.stat().st_mode & 0o222 == 0 for p in reg.path(version).iterdir())
    with pytest.raises(TransitionError, match="already exists"), reg.build(version, RUN, {}):
        pass
    assert checkpoint.read_bytes() == b"weights"
    staged = pytest.raises(TransitionError, match="cannot add candidates.parquet")
    with staged, reg.add_artifact(version, RUN, "candidates.parquet"):  # still staged
        pass
    reg.transition(version, GATED, RUN, "gate passed")
    other = pytest.raises(TransitionError, match="built by run-a")
    with other, reg.add_artifact(version, "run-b", "candidates.parquet"):
        pass
    with reg.add_artifact(version, RUN, "candidates.parquet") as path:
        path.write_bytes(b"rows")
    twice = pytest.raises(TransitionError, match="written once")
    with twice, reg.add_artifact(version, RUN, "candidates.parquet") as path:
        path.write_bytes(b"other rows")
    assert (reg.path(version) / "candidates.parquet").read_bytes() == b"rows"
    assert (reg.path(version) / "candidates.parquet").stat().st_mode & 0o222 == 0
    info = reg.info(version)
    assert (info["run_id"], info["fingerprint"], info["state"]) == (RUN, "print-0", GATED)


def test_a_failed_build_leaves_nothing(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    version = reg.new_version("broken00")
    with pytest.raises(RuntimeError), reg.build(version, RUN, {}) as folder:
        (folder / "checkpoint.pt").write_bytes(b"half")
        raise RuntimeError("training diverged")
    assert reg.versions() == [] and reg.record(version) is None
    assert not any(reg.staging_root.iterdir())


def _table(db: Path, version: str, hnsw: bool = False) -> None:
    ids = np.arange(1, 5)
    vectors = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    write_item_table(db, version, ids, vectors, hnsw_min_rows=1 if hnsw else 10**9)


def test_retention_keeps_current_previous_and_last_n_and_deletes_tables(tmp_path):
    reg, db = ModelRegistry(tmp_path / "models"), tmp_path / "lancedb"
    versions = []
    for n in range(7):  # v0..v6; v1 current then v2, v3 and v5 rejected, v6 in progress
        version = build(reg, f"run-{n}", n=n)
        versions.append(version)
        _table(db, version, hnsw=n == 0)
    v = versions
    advance(reg, v[0], PROMOTED, "run-0")
    advance(reg, v[1], PROMOTED, "run-1")  # v0 retired
    for n in (2, 3, 5):
        reg.transition(v[n], REJECTED, f"run-{n}", "gate failed")
    advance(reg, v[4], PROMOTED, "run-4")  # v1 retired: previous
    reg.transition(v[6], GATED, "run-6", "gate passed")
    _table(db, "20200101T000000000000-orphan00")  # a table no version owns
    assert list((db / HNSW_DIR).glob(f"{v[0]}@*.faiss"))

    result = apply_retention(reg, db, keep=2)

    assert (reg.current(), reg.previous()) == (v[4], v[1])
    assert result.deleted == [v[0], v[2], v[3]]
    assert result.orphan_tables == ["20200101T000000000000-orphan00"]
    assert result.kept == [v[1], v[4], v[5], v[6]]  # previous, current, last 2 (v5, v6)
    assert reg.versions() == [v[1], v[4], v[5], v[6]] and reg.recorded() == reg.versions()
    assert list_versions(db, include_unpublished=True) == [v[1], v[4], v[5], v[6]]
    assert not list((db / HNSW_DIR).glob(f"{v[0]}@*.faiss"))
    deletions = [json.loads(x) for x in reg.log_path.read_text().splitlines()]
    assert [e["version"] for e in deletions if e.get("deleted")] == [v[0], v[2], v[3]]
    assert apply_retention(reg, db, keep=2).deleted == []  # nothing more to delete


def test_retention_never_deletes_current_or_previous_even_with_keep_zero(tmp_path):
    reg, db = ModelRegistry(tmp_path / "models"), tmp_path / "lancedb"
    first, second = in_state(reg, RETIRED, n=0), build(reg, "run-b", n=5)
    current = reg.current()
    advance(reg, second, GATED, "run-b")
    for version in (first, current, second):
        _table(db, version)
    result = apply_retention(reg, db, keep=0)
    assert result.deleted == [] and sorted(result.kept) == sorted([first, current, second])
    with pytest.raises(ValueError, match="keep_versions must be >= 0"):
        apply_retention(reg, db, keep=-1)


def test_a_run_killed_during_the_switch_is_reconciled_with_current_json(tmp_path):
    """current.json is written first; a run killed before the states follow leaves the
    switch done and the states behind: the next run brings them in line, abandons nothing."""
    from recsys.io import atomic_write_json

    reg = ModelRegistry(tmp_path / "models")
    first = in_state(reg, PROMOTED, n=0)
    second = build(reg, "run-b", n=1)
    advance(reg, second, EMBEDDED, "run-b")
    atomic_write_json(reg.root / "current.json", {"version": second, "previous": first})
    assert (reg.state(first), reg.state(second)) == (PROMOTED, EMBEDDED)  # killed here
    assert reg.abandon_unfinished("run-c") == []
    assert (reg.current(), reg.state(first), reg.state(second)) == (second, RETIRED, PROMOTED)
    assert reg.record(second)["history"][-1]["run_id"] == "run-c"  # type: ignore[index]


def test_retention_with_fewer_versions_than_keep_deletes_nothing(tmp_path):
    from recsys.retention import apply_retention

    reg = ModelRegistry(tmp_path / "models")
    rejected = in_state(reg, REJECTED, n=0)  # the gate rejected it, a fallback then promoted
    current = in_state(reg, PROMOTED, n=1)
    kept = apply_retention(reg, tmp_path / "lancedb", keep=3)
    assert kept.deleted == [] and reg.versions() == [rejected, current]
