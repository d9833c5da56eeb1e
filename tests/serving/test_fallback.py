"""Always something to serve (tier 3): on a fresh folder where the two-tower fails the
quality gate, the popularity fallback is promoted, served and flagged (responses, /readyz,
/metrics); a later two-tower that passes the gate replaces it; and the gate re-scores the
current version on the candidate's window instead of trusting its stored metrics.

The failing two-tower comes from legitimate settings, not a hook: one epoch at softmax
temperature 0.0001, so sharp that on this data it ranks below popularity (recall@20 0.149
against 0.219)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.registry import PROMOTED, REJECTED, RETIRED, ModelRegistry
from tests.serving.conftest import materialize_pipeline, start_server, stop_server

BAD = {"temperatures": "0.0001", "max_epochs": 1}


def gate_checks(result) -> list:
    return [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]


@pytest.fixture(scope="module")
def fallback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fallback") / "data"
    result = materialize_pipeline(data, **BAD)
    assert result.success  # the gate's failure is a warning: the fallback goes on
    (check,) = gate_checks(result)
    assert not check.passed and check.severity.value == "WARN"
    assert "serving fallback version" in check.metadata["verdict"].value
    return data


def test_a_fresh_folder_whose_two_tower_fails_promotes_the_fallback(fallback_dir: Path):
    reg = ModelRegistry(fallback_dir / "models")
    current = reg.current()
    assert current is not None
    info = reg.info(current)
    assert (info["kind"], info["baseline"], info["state"]) == ("fallback", "popularity", PROMOTED)
    rejected = info["rejected_two_tower"]
    assert reg.state(rejected) == REJECTED
    assert [h["to"] for h in reg.record(current)["history"]] == [  # type: ignore[index]
        "staged", "gated", "embedded", "promoted"]  # fmt: skip
    # Its candidates: each user's most popular unseen items, best first.
    events = pd.read_parquet(fallback_dir / "dataset" / "interactions.parquet")
    counts = events.item_id.value_counts()
    table = pd.read_parquet(fallback_dir / "candidates" / "user_candidates.parquet")
    assert set(table.model_version) == {current}
    row = table.iloc[0]
    seen = set(events.loc[events.user_id == row.user_id, "item_id"])
    assert not seen & set(row.candidate_item_ids)
    scores = counts.reindex(row.candidate_item_ids).to_numpy()
    assert (np.diff(scores) <= 0).all() and scores[0] == counts.drop(list(seen)).max()


def test_serving_answers_from_the_fallback_and_says_so(fallback_dir: Path):
    reg = ModelRegistry(fallback_dir / "models")
    current = reg.current()
    events = pd.read_parquet(fallback_dir / "dataset" / "interactions.parquet")
    ranking = pd.read_parquet(reg.path(current) / "ranking.parquet")  # type: ignore[operator]
    server = start_server(fallback_dir, fallback_dir.parent / "server.log")
    try:
        status, ready = server.get("/readyz")
        assert status == 200 and ready["fallback"] is True
        assert (ready["model_version"], ready["model_kind"]) == (current, "popularity")
        user = int(events.user_id.iloc[0])
        status, body = server.get(f"/recommendations/{user}?k=10")
        assert status == 200 and body["fallback"] is True and body["model_version"] == current
        seen = set(events.loc[events.user_id == user, "item_id"])
        unseen = ranking[~ranking.item_id.isin(seen)]
        # Equal counts may come in any order: the scores, best first, are the ranking's.
        assert [item["score"] for item in body["items"]] == unseen.score[:10].tolist()
        assert not seen & {item["item_id"] for item in body["items"]}
        recent = [int(i) for i in ranking.item_id[:3]]
        status, body = server.post("/recommendations",
                                   {"age": 30, "k": 10,
                                    "recent": [{"item_id": i} for i in recent]})  # fmt: skip
        assert status == 200 and body["fallback"] is True
        assert [item["score"] for item in body["items"]] == ranking.score[3:13].tolist()
        assert not set(recent) & {item["item_id"] for item in body["items"]}
        status, text = server.get("/metrics")
        assert status == 200 and "recsys_serving_fallback 1.0" in text
    finally:
        stop_server(server)


def test_a_later_two_tower_that_passes_the_gate_replaces_the_fallback(fallback_dir: Path):
    reg = ModelRegistry(fallback_dir / "models")
    fallback = reg.current()
    result = materialize_pipeline(fallback_dir)  # the FAST settings: a model that learns
    assert result.success
    (check,) = gate_checks(result)
    assert check.passed, check.metadata["verdict"].value
    current = reg.current()
    assert current != fallback and reg.info(current).get("kind") is None  # type: ignore[arg-type]
    assert reg.state(fallback) == RETIRED  # type: ignore[arg-type]


def test_the_gate_rescores_the_current_version_on_the_candidates_window(
    fallback_dir: Path, tmp_path: Path
):
    """The stored metrics of the current version say 0.99: a gate that read them would
    reject the candidate; re-scored on the window, the same model ties with itself."""
    from recsys.settings import Settings
    from towers.rescore import gate_on_one_window

    models = tmp_path / "models"
    shutil.copytree(fallback_dir / "models", models)
    reg = ModelRegistry(models)
    current = reg.current()
    assert current is not None and reg.info(current).get("kind") is None
    path = reg.path(current) / "metrics.json"
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    metrics = reg.metrics(current)
    stored = dict(metrics)
    stored["models"] = {**metrics["models"], "two-tower (softmax)": {"all": {"recall@20": 0.99}}}
    path.write_text(json.dumps(stored))
    settings = Settings(data_dir=fallback_dir)
    decision, judged = gate_on_one_window(settings, reg, current, current, metrics)
    assert judged["current_recall@20_as_stored"] == 0.99
    ours = metrics["models"]["two-tower (softmax)"]["all"]["recall@20"]
    assert judged["current_recall@20_on_window"] == judged["candidate_recall@20_on_window"]
    assert judged["candidate_recall@20_on_window"] == pytest.approx(ours, abs=1e-4)
    assert decision.passed and decision.vs_current is not None
    assert decision.vs_current.low == decision.vs_current.high == 0.0
    assert decision.outcome.startswith("promoted: not significantly different")
