"""Always something to serve (tier 3): on a fresh folder where the two-tower fails the
quality gate, the best servable baseline on validation is promoted as a fallback, served
and flagged (responses, /readyz, /metrics); a later two-tower that passes the gate replaces
it; the gate re-scores the current version's evaluated model on the candidate's window
instead of trusting its stored metrics; and recent-popularity and segment-popularity
fallbacks answer GET and POST from the scores of the user's window or segment.

The failing two-tower comes from legitimate settings, not a hook: one epoch at softmax
temperature 0.0001, so sharp that on this data it ranks below popularity (recall@20 0.149
against 0.219)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.fallback import choose
from recsys import fallback
from recsys.registry import PROMOTED, REJECTED, RETIRED, ModelRegistry
from tests.serving.conftest import materialize_pipeline, start_server, stop_server

# A two-tower that fails the gate's baseline rule (on here; FAST turns it off).
BAD = {"temperatures": "0.0001", "max_epochs": 1, "gate_against_baseline": True}


def gate_checks(result) -> list:
    return [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]


def score_column(reg: ModelRegistry, version: str, profile: dict) -> str:
    """The ranking.parquet column a fallback ranks this profile by (recsys.fallback)."""
    names = fallback.segments(reg.path(version))
    if not names:
        return fallback.GLOBAL
    label = fallback.segment_label(profile, reg.info(version)["segment_fields"])
    return label if label in names else fallback.GLOBAL


def profile_of(data: Path, user: int) -> dict:
    """A known user's profile as the online features carry it (age as its bucket, the zip
    code as its region)."""
    from towers.segments import profile_feature

    users = pd.read_parquet(data / "dataset" / "users.parquet").set_index("user_id")
    row = users.loc[user]
    age = profile_feature(pd.DataFrame({"age": [row.age]}), "age_bucket").iloc[0]
    region = profile_feature(pd.DataFrame({"zip_code": [row.zip_code]}), "zip_region").iloc[0]
    return {"age_bucket": age, "gender": row.gender, "occupation": row.occupation,
            "zip_region": region}  # fmt: skip


def expected_scores(ranking: pd.DataFrame, column: str, exclude: set, k: int) -> list:
    """The top-k scores of ``column`` once ``exclude`` is removed (ties in any order)."""
    kept = ranking[~ranking.item_id.isin(exclude)]
    return kept[column].sort_values(ascending=False, kind="stable")[:k].tolist()


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
    # The servable baseline with the best validation recall@20 (evaluation.fallback.choose).
    chosen, _, why = choose(reg.metrics(current))
    assert (info["kind"], info["baseline"], info["state"]) == ("fallback", chosen, PROMOTED)
    assert info["reason"] == why and "best validation recall@20" in why
    rejected = info["rejected_two_tower"]
    assert reg.state(rejected) == REJECTED
    assert [h["to"] for h in reg.record(current)["history"]] == [  # type: ignore[index]
        "staged", "gated", "embedded", "promoted"]  # fmt: skip
    # Its candidates: each user's best unseen items by the baseline's score, best first.
    events = pd.read_parquet(fallback_dir / "dataset" / "interactions.parquet")
    ranking = pd.read_parquet(reg.path(current) / fallback.RANKING)
    table = pd.read_parquet(fallback_dir / "candidates" / "user_candidates.parquet")
    assert set(table.model_version) == {current}
    row = table.iloc[0]
    seen = set(events.loc[events.user_id == row.user_id, "item_id"])
    assert not seen & set(row.candidate_item_ids)
    column = score_column(reg, current, profile_of(fallback_dir, int(row.user_id)))
    scores = ranking.set_index("item_id")[column].reindex(row.candidate_item_ids).to_numpy()
    assert (np.diff(scores) <= 0).all()
    assert scores.tolist() == expected_scores(ranking, column, seen, len(scores))


def test_serving_answers_from_the_fallback_and_says_so(fallback_dir: Path):
    reg = ModelRegistry(fallback_dir / "models")
    current = reg.current()
    events = pd.read_parquet(fallback_dir / "dataset" / "interactions.parquet")
    ranking = pd.read_parquet(reg.path(current) / "ranking.parquet")  # type: ignore[operator]
    server = start_server(fallback_dir, fallback_dir.parent / "server.log")
    try:
        status, ready = server.get("/readyz")
        assert status == 200 and ready["fallback"] is True
        assert (ready["model_version"], ready["model_kind"]) == (current, info_of(reg, current))
        assert_answers(server, reg, current, fallback_dir, events, ranking)
        status, text = server.get("/metrics")
        assert status == 200 and "recsys_serving_fallback 1.0" in text
    finally:
        stop_server(server)


def info_of(reg: ModelRegistry, version: str | None) -> str:
    return reg.info(version)["baseline"]  # type: ignore[arg-type]


def assert_answers(server, reg: ModelRegistry, version: str, data: Path, events: pd.DataFrame,
                   ranking: pd.DataFrame) -> None:  # fmt: skip
    """GET for a known user and POST for a new one answer from the fallback's scores for
    their profile (equal scores may come in any order: the scores, best first, are
    compared), seen or recent items excluded."""
    user = int(events.user_id.iloc[0])
    status, body = server.get(f"/recommendations/{user}?k=10")
    assert status == 200 and body["fallback"] is True and body["model_version"] == version
    assert body["model_kind"] == reg.info(version)["baseline"]
    seen = set(events.loc[events.user_id == user, "item_id"])
    column = score_column(reg, version, profile_of(data, user))
    assert [item["score"] for item in body["items"]] == expected_scores(ranking, column, seen, 10)
    assert not seen & {item["item_id"] for item in body["items"]}
    users = pd.read_parquet(data / "dataset" / "users.parquet")
    profile = users.iloc[-1]
    recent = [int(i) for i in ranking.item_id[:3]]
    status, body = server.post("/recommendations",
                               {"age": int(profile.age), "gender": profile.gender,
                                "occupation": profile.occupation,
                                "zip_code": profile.zip_code, "k": 10,
                                "recent": [{"item_id": i} for i in recent]})  # fmt: skip
    assert status == 200 and body["fallback"] is True
    assert body["model_kind"] == reg.info(version)["baseline"]
    column = score_column(reg, version, profile_of(data, int(profile.user_id)))
    expected = expected_scores(ranking, column, set(recent), 10)
    assert [item["score"] for item in body["items"]] == expected
    assert not set(recent) & {item["item_id"] for item in body["items"]}


def test_a_later_two_tower_that_passes_the_gate_replaces_the_fallback(fallback_dir: Path):
    reg = ModelRegistry(fallback_dir / "models")
    fallback = reg.current()
    # The FAST settings: a model that learns, its gate against the current version only
    # (FAST's baseline rule is off; whether it clears EASE on 67 users is a coin toss).
    result = materialize_pipeline(fallback_dir)
    assert result.success
    (check,) = gate_checks(result)
    assert check.passed, check.metadata["verdict"].value
    current = reg.current()
    assert current != fallback and reg.info(current).get("kind") is None  # type: ignore[arg-type]
    assert reg.state(fallback) == RETIRED  # type: ignore[arg-type]
    # It serves the refit on every row before as_of; its scores are the evaluated model's.
    info = reg.info(current)  # type: ignore[arg-type]
    training = pd.read_parquet(fallback_dir / "training" / "training_set.parquet")
    assert info["served"]["checkpoint"] == "checkpoint.pt"
    assert info["served"]["rows"] == len(training)
    assert info["evaluated"]["checkpoint"] == "checkpoint_eval.pt"
    assert info["evaluated"]["rows"] == int((training.split == "train").sum())
    folder = reg.path(current)  # type: ignore[arg-type]
    assert (folder / "checkpoint.pt").exists() and (folder / "checkpoint_eval.pt").exists()


def test_the_gate_rescores_the_current_version_on_the_candidates_window(
    fallback_dir: Path, tmp_path: Path
):
    """The stored metrics of the current version say 0.99: a gate that read them would
    reject the candidate; re-scored on the window, the same model ties with itself."""
    from evaluation.gate_window import gate_on_one_window
    from recsys.settings import Settings

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
    # The baseline rule off, as in the run that built this version (FAST): this test is
    # about the comparison with the current version.
    decision, judged = gate_on_one_window(settings, reg, current, current, metrics,
                                          against_baseline=False)  # fmt: skip
    assert judged["current_recall@20_as_stored"] == 0.99
    ours = metrics["models"]["two-tower (softmax)"]["all"]["recall@20"]
    assert judged["current_recall@20_on_window"] == judged["candidate_recall@20_on_window"]
    assert judged["candidate_recall@20_on_window"] == pytest.approx(ours, abs=1e-4)
    assert decision.passed and decision.vs_current is not None
    assert decision.vs_current.low == decision.vs_current.high == 0.0
    assert decision.outcome.startswith("promoted: not significantly different")
    assert decision.baseline in metrics["models"] and decision.vs_baseline is not None
    # A current version whose evaluated model saw the window is not compared (a leak).
    path = reg.path(current) / "version.json"
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    info = json.loads(path.read_text())
    cuts = json.loads((fallback_dir / "training" / "summary.json").read_text())["cuts"]
    info["evaluated"]["last_event"] = cuts["test_start"]
    path.write_text(json.dumps(info))
    decision, judged = gate_on_one_window(settings, reg, current, current, metrics)
    assert decision.vs_current is None and "would leak" in judged["current_not_rescored"]


@pytest.mark.parametrize("baseline", ["popularity (recent)", "segment popularity"])
def test_recent_and_segment_popularity_fallbacks_answer_get_and_post(
    fallback_dir: Path, baseline: str
):
    """Each built from the current version's metrics with that baseline chosen, embedded,
    given candidates and promoted by the graph's own assets, then served."""
    from evaluation.new_version import build_fallback
    from recsys.settings import Settings
    from towers.segments import SEGMENTATIONS

    reg = ModelRegistry(fallback_dir / "models")
    current = reg.current()
    assert current is not None
    choices = reg.metrics(current)["choices"]
    settings: dict = {"window_days": 14}
    if baseline == "segment popularity":
        settings = {"segment_fields": list(SEGMENTATIONS[choices[baseline]["segmentation"]])}
    run_id = str(uuid.uuid4())
    version, _ = build_fallback(Settings(data_dir=fallback_dir), reg, run_id, "0f" * 4, current,
                                (baseline, settings, "chosen by the test"))  # fmt: skip
    result = materialize_pipeline(fallback_dir, ["item_embeddings", "user_candidates",
                                                 "promoted_model"], run_id)  # fmt: skip
    assert result.success and reg.current() == version
    events = pd.read_parquet(fallback_dir / "dataset" / "interactions.parquet")
    ranking = pd.read_parquet(reg.path(version) / fallback.RANKING)
    as_of = pd.Timestamp(json.loads((fallback_dir / "features" / "manifest.json").read_text())
                         ["as_of"])  # fmt: skip
    if baseline == "popularity (recent)":  # the window's counts, not all history's
        recent = events[(events.event_timestamp < as_of)
                        & (events.event_timestamp >= as_of - pd.Timedelta(days=14))]  # fmt: skip
        counts = recent.item_id.value_counts().reindex(ranking.item_id, fill_value=0)
        assert ranking.score.tolist() == counts.astype(float).tolist()
        assert len(events[events.event_timestamp < as_of]) > len(recent)
    else:  # the users asked about below are ranked by their own segment's counts
        assert len(fallback.segments(reg.path(version))) > 1
        users = pd.read_parquet(fallback_dir / "dataset" / "users.parquet")
        for user in (int(events.user_id.iloc[0]), int(users.user_id.iloc[-1])):
            assert score_column(reg, version, profile_of(fallback_dir, user)) != fallback.GLOBAL
    server = start_server(fallback_dir, fallback_dir.parent / f"server-{baseline[:7]}.log")
    try:
        status, ready = server.get("/readyz")
        assert status == 200 and ready["fallback"] is True
        assert (ready["model_version"], ready["model_kind"]) == (version, baseline)
        assert_answers(server, reg, version, fallback_dir, events, ranking)
        status, text = server.get("/metrics")
        assert status == 200 and f'recsys_serving_model_kind{{kind="{baseline}"}} 1.0' in text
    finally:
        stop_server(server)
