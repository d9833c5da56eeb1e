"""A new version's rules as plain functions (tier 1, no Dagster): the fingerprint that
decides train-or-reuse, the gate of a reused version, the transition the gate decides,
when a fallback is built, and what a promotion records."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation import gate_window
from evaluation.new_version import (
    fingerprint_of,
    gate_version,
    needs_fallback,
    reused_decision,
)
from evaluation.version_outputs import promotion_reason, version_candidates, version_item_vectors
from recsys import fallback
from recsys.gate import MODEL, GateDecision
from recsys.registry import GATED, REJECTED, ModelRegistry
from recsys.settings import Settings
from towers.release import PER_USER

RUN = "run-1"


def _metrics(ours: float, popularity: float) -> dict:
    return {"models": {MODEL: {"all": {"recall@20": ours}},
                       "popularity": {"all": {"recall@20": popularity}}}}  # fmt: skip


def _version(reg: ModelRegistry, metrics: dict, info: dict | None = None,
             files: dict[str, pa.Table] | None = None) -> str:  # fmt: skip
    """A staged version of ``reg`` holding ``metrics`` (and parquet ``files``)."""
    version = reg.new_version(f"{len(reg.recorded()):08d}")  # unique within the test
    with reg.build(version, RUN, dict(info or {})) as folder:
        (folder / "metrics.json").write_text(json.dumps(metrics))
        for name, table in (files or {}).items():
            pq.write_table(table, folder / name)
    return version


def _published(data: Path, rows: int, path: str) -> Settings:
    """A data folder with the three manifests a fingerprint reads."""
    for sub, doc in (("dataset", {"rows": rows}), ("features", {"rows": {"user": rows}}),
                     ("training", {"rows": {"train": rows}, "path": path})):  # fmt: skip
        (data / sub).mkdir(parents=True, exist_ok=True)
        name = "summary.json" if sub == "training" else "manifest.json"
        (data / sub / name).write_text(json.dumps(doc))
    return Settings(data_dir=data)


def test_the_fingerprint_changes_with_data_and_config_not_with_where_it_was_written(tmp_path):
    one = fingerprint_of(_published(tmp_path / "a", 10, "/x"), {"dim": 32}, [0.05, 0.1])
    assert one == fingerprint_of(_published(tmp_path / "b", 10, "/elsewhere"), {"dim": 32},
                                 (0.05, 0.1))  # fmt: skip
    assert one != fingerprint_of(_published(tmp_path / "c", 11, "/x"), {"dim": 32}, [0.05, 0.1])
    assert one != fingerprint_of(_published(tmp_path / "d", 10, "/x"), {"dim": 64}, [0.05, 0.1])
    assert one != fingerprint_of(_published(tmp_path / "e", 10, "/x"), {"dim": 32}, [0.1])


def test_a_reused_version_is_judged_on_its_own_per_user_scores(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    # Below popularity on average, but not significantly (users disagree): passes with
    # per-user scores, fails on the point estimate without them.
    per_user = pa.table({"user_id": np.arange(6), MODEL: [1.0, 0, 1, 0, 1, 0.0],
                         "popularity": [0.0, 1, 0, 1, 1, 0.5]})  # fmt: skip
    with_scores = _version(reg, _metrics(0.50, 0.58), files={PER_USER: per_user})
    assert reused_decision(reg, with_scores).passed
    without = _version(reg, _metrics(0.50, 0.58))
    decision = reused_decision(reg, without)
    assert not decision.passed and decision.outcome == "rejected: not above popularity"
    assert reused_decision(reg, without, against_baseline=False).passed


@pytest.mark.parametrize("passed, state", [(True, GATED), (False, REJECTED)])
def test_the_gate_moves_the_version_to_gated_or_rejected(tmp_path, monkeypatch, passed, state):
    reg = ModelRegistry(tmp_path / "models")
    version = _version(reg, _metrics(0.3, 0.2))
    decision = GateDecision(passed, "promoted: x" if passed else "rejected: x", "the verdict")
    calls = []

    def gate(*args, **kwargs):
        calls.append(args)
        return decision, {"current": "none"}

    monkeypatch.setattr(gate_window, "gate_on_one_window", gate)
    got, judged = gate_version(Settings(data_dir=tmp_path), reg, RUN, version, None,
                               reg.metrics(version))  # fmt: skip
    assert got is decision and judged == {"current": "none"} and len(calls) == 1
    assert reg.state(version) == state
    assert reg.record(version)["history"][-1]["reason"] == "quality gate the verdict"


def test_a_fallback_is_built_only_when_no_two_tower_could_keep_serving(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    two_tower = _version(reg, _metrics(0.3, 0.2))
    baseline = _version(reg, _metrics(0.3, 0.2), info={"kind": fallback.KIND})
    failed, passed = GateDecision(False, "rejected: x", "v"), GateDecision(True, "promoted", "v")
    assert needs_fallback(failed, reg, None)
    assert needs_fallback(failed, reg, baseline)
    assert not needs_fallback(failed, reg, two_tower)  # the current two-tower stays
    assert not needs_fallback(passed, reg, None)


def test_a_promotion_says_which_kind_and_why():
    assert promotion_reason({"kind": "fallback", "baseline": "popularity"}) == (
        "fallback",
        "pipeline: fallback popularity, no two-tower passed the quality gate",
    )
    assert promotion_reason({}) == ("two-tower", "pipeline: quality gate passed")


def test_a_fallback_versions_vectors_and_candidates_come_from_its_ranking(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    items = np.array([10, 20, 30])
    ranking = pa.table({"item_id": [20, 10, 30], fallback.GLOBAL: [5.0, 3.0, 1.0]})
    version = _version(reg, {}, info={"kind": fallback.KIND},
                       files={fallback.RANKING: ranking})  # fmt: skip
    vectors = version_item_vectors(reg, version, None, items, None)
    assert vectors.tolist() == [[3.0], [5.0], [1.0]]  # (N, 1), in item_ids order
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame({"user_id": [1, 2], "item_id": [20, 30],
                           "event_timestamp": [t0, t0]})  # fmt: skip
    read = []
    table = version_candidates(reg, version, None, events, lambda: read.append(1), items,
                               vectors, t0 + pd.Timedelta(days=1), k=1).to_pandas()  # fmt: skip
    # Each user's best unseen item by score: 10 for user 1 (saw 20), 20 for user 2.
    assert dict(zip(table.user_id, [ids[0] for ids in table.candidate_item_ids],
                    strict=True)) == {1: 10, 2: 20}  # fmt: skip
    assert read == [1]  # the users profile is read for a fallback (segments need it)
