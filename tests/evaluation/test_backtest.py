"""The rolling backtest (evaluation.backtest): cuts and windows, no event at or after a cut
reaches what is fitted for it, the new-user group's history and truth, the oracle, the
report, determinism by seed, and the Dagster asset with its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.backtest import (
    COLD,
    ORACLE,
    TWO_TOWER,
    WARM,
    BacktestConfig,
    oracle_truth,
    plan_windows,
    run_backtest,
)
from evaluation.backtest_cut import cold_start_batch, new_user_split
from tests.conftest import ts
from towers.evaluate import build_eval_split

CFG = BacktestConfig(quantiles=(0.6, 0.8), max_epochs=1, temperatures=(0.05,), resamples=100,
                     seed=3)  # fmt: skip


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from recsys.datasets.synthetic import generate_synthetic

    folder = tmp_path_factory.mktemp("backtest") / "dataset"
    generate_synthetic(folder, 8000, seed=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def backtested(synthetic, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("backtest-out")
    lines: list[str] = []
    summary = run_backtest(synthetic, out, CFG, oracle_truth("folder", synthetic),
                           progress=lines.append)  # fmt: skip
    assert len([line for line in lines if line.startswith("✓ cut")]) == 2  # one line per cut
    return out, summary


def test_windows_follow_the_quantiles_and_tile_the_timeline():
    when = pd.Series(pd.date_range("2024-01-01", periods=1000, freq="h", tz="UTC"))
    end = when.iloc[-1] + pd.Timedelta(microseconds=1)
    windows = plan_windows(when, end, BacktestConfig())
    assert [w.cut for w in windows] == [when.iloc[q] for q in (500, 600, 700, 800, 900)]
    assert [w.end for w in windows] == [w.cut for w in windows[1:]] + [end]
    assert [w.test_events for w in windows] == [100] * 5
    # Validation: as many events as the test window, ending at the cut.
    assert [w.val_start for w in windows] == [when.iloc[q - 100] for q in (500, 600, 700, 800, 900)]
    assert all(w.val_events == 100 for w in windows)
    explicit = plan_windows(when, end, BacktestConfig(cut_times=(when.iloc[700].to_pydatetime(),),
                                                      val_share=0.5))  # fmt: skip
    assert [(w.val_start, w.cut, w.end, w.val_events, w.test_events) for w in explicit] == [
        (when.iloc[550], when.iloc[700], end, 150, 300)
    ]
    with pytest.raises(ValueError, match="cuts must increase"):
        plan_windows(when, end, BacktestConfig(quantiles=(0.8, 0.6)))


def _event(user: int, item: int, when: str) -> dict:
    return {"user_id": user, "item_id": item, "rating": 4.0, "event_timestamp": ts(when)}


def test_new_users_get_exactly_their_first_events_as_history_and_are_scored_on_the_rest():
    rows = [_event(1, 1, "2024-01-01")]  # user 1: seen before the cut
    rows += [_event(1, i, "2024-02-01") for i in range(2, 9)]
    # User 2: 8 window events, given out of time order; items 3 and 4 repeat.
    times = ["2024-02-05", "2024-02-01", "2024-02-02", "2024-02-03", "2024-02-03",
             "2024-02-04", "2024-02-06", "2024-02-07"]  # fmt: skip
    rows += [_event(2, i, t) for i, t in zip([6, 1, 2, 3, 4, 5, 3, 7], times, strict=True)]
    rows += [_event(3, i, "2024-02-01") for i in range(1, 6)]  # 5 events: no rest to score
    rows += [_event(4, i, "2024-02-01") for i in (1, 2, 3, 4, 5, 1)]  # rest seen already
    rows += [_event(2, 8, "2024-03-01")]  # after the window
    interactions = pd.DataFrame(rows)
    items = np.arange(1, 10)
    test = build_eval_split(interactions, items, ts("2024-01-15"), ts("2024-02-15"))
    split, given = new_user_split(interactions, items, test, history=5)
    assert split.user_ids.tolist() == [2]
    # The first five by time (the tie on 02-03 in row order): items 1, 2, 3, 4, 5.
    assert given.item_id.tolist() == [1, 2, 3, 4, 5]
    assert np.flatnonzero(split.seen.toarray()[0]).tolist() == [0, 1, 2, 3, 4]  # positions
    # The rest (6, 3, 7) minus what the history holds (3): items 6 and 7, never item 8.
    assert [items[t].tolist() for t in split.truth] == [[6, 7]]
    assert not split.warm.any() and split.start == test.start and split.end == test.end


def test_cold_start_batch_is_the_post_path_with_the_given_history(synthetic):
    from recsys.features.encoding import FeatureEncoder
    from recsys.features.row_encoding import RowEncoder

    users = pd.read_parquet(synthetic / "users.parquet").head(2)
    given = pd.DataFrame([_event(int(users.user_id[0]), i, f"2024-02-0{i}") for i in (3, 1, 2)])
    encoder = FeatureEncoder(user_ids=[1, 2], item_ids=[1, 2, 3], cats={"age_bucket": [],
                             "gender": ["F", "M"], "occupation": [], "zip_prefix": [], "zip_region": []},
                             genres=["Action"], stats={k: (0.0, 1.0) for k in (
                                 "user_interaction_count", "user_mean_rating", "history_rating",
                                 "history_log_hours")}, history=4)  # fmt: skip
    batch = cold_start_batch(encoder, users, given, synthetic / "items.parquet", recent_items=20)
    assert batch["history"].tolist() == [[4, 3, 2, 1], [1, 1, 1, 1]]  # newest first; padding
    assert batch["user"].tolist() == [0, 0]  # the unknown-user slot, as a POST
    assert batch["nums"][1, 2:].tolist() == [1.0, 1.0]  # no events: counts missing
    assert set(batch) == set(RowEncoder(encoder).arrays(None, {}))
    # Sent right after the last given event (02-03): the newest is 0 hours old, then 1 and
    # 2 days (log1p hours; the stats here are the identity).
    hours = batch["history_feats"][0, :3, 2].tolist()
    assert hours == pytest.approx([0.0, np.log1p(24.0), np.log1p(48.0)], abs=1e-5)


def test_history_baselines_fold_in_the_new_users_history(synthetic):
    from towers.ease import EASE

    interactions = pd.read_parquet(synthetic / "interactions.parquet")
    items = pd.read_parquet(synthetic / "items.parquet").item_id.to_numpy()
    cut = interactions.event_timestamp.quantile(0.7)
    test = build_eval_split(interactions, items, cut, None)
    split, _ = new_user_split(interactions, items, test, history=5)
    assert len(split.user_ids) > 0
    model = EASE(100.0).fit(interactions[interactions.event_timestamp < cut], items)
    rows = np.arange(len(split.user_ids))
    folded = model.fold_in_fn(split)(rows)
    assert np.allclose(folded, split.seen @ model.weights_)  # scored from the given events
    assert not np.allclose(folded, model.score_fn(split)(rows))  # not the popularity fallback


def test_nothing_at_or_after_a_cut_is_fitted(synthetic, backtested):
    out, summary = backtested
    events = pd.read_parquet(synthetic / "interactions.parquet")
    for w in summary["windows"]:
        cut, end = pd.Timestamp(w["cut"]), pd.Timestamp(w["end"])
        folder = out / "cuts" / f"cut{w['index']}"
        rows = pd.read_parquet(folder / "training" / "training_set.parquet")
        fitted = rows[rows.split.isin(["train", "val"])]
        assert (
            fitted.event_timestamp.max() < cut <= rows[rows.split == "test"].event_timestamp.min()
        )
        assert rows.event_timestamp.max() < end
        manifest = json.loads((folder / "features" / "manifest.json").read_text())
        assert pd.Timestamp(manifest["as_of"]) == end
        # The refit saw exactly the events before the cut, and the window's split is the cut.
        assert summary["windows"][w["index"] - 1]["choices"][TWO_TOWER]["training_rows"] == int(
            (events.event_timestamp < cut).sum()
        )
        assert pd.Timestamp(w["val_start"]) == fitted[fitted.split == "val"].event_timestamp.min()


def test_report_has_every_model_group_and_metric_with_intervals(backtested):
    out, summary = backtested
    saved = json.loads((out / "backtest.json").read_text())
    assert saved["models"][0] == TWO_TOWER and ORACLE in saved["models"]
    assert {"EASE", "ItemKNN", "popularity", "popularity (recent)"} <= set(saved["models"])
    new = CFG.new_group
    for w in saved["windows"]:
        assert set(w["metrics"][TWO_TOWER]) == {WARM, COLD, new}
        for model in saved["models"]:
            for cell in w["metrics"][model][WARM].values():
                assert cell["low"] <= cell["mean"] <= cell["high"]
        assert w["best_baseline"][WARM]["model"] not in (TWO_TOWER, ORACLE)
        # The popularity prior was chosen on validation: the best of its grid, none included.
        chosen = w["choices"][TWO_TOWER]
        grid = chosen["val_recall@20 by prior"]
        assert "none" in grid and grid[chosen["popularity_prior"]] == max(grid.values())
    mean = saved["mean"][TWO_TOWER][WARM]
    assert set(mean) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}
    per_window = [w["metrics"][TWO_TOWER][WARM]["recall@20"]["mean"] for w in saved["windows"]]
    assert mean["recall@20"]["mean"] == pytest.approx(np.mean(per_window), abs=1e-6)
    assert set(saved["oracle_share"]) == {WARM, COLD, new}
    assert (out / "backtest.png").read_bytes()[:4] == b"\x89PNG"
    assert "## warm: recall@20" in (out / "backtest.md").read_text()


def test_dagster_asset_materializes_with_metadata_and_same_seed_same_numbers(
    synthetic, backtested, tmp_path
):
    from dagster import materialize

    from orchestration.assets.backtest import backtest

    config = {"dataset": str(synthetic), "data_dir": str(tmp_path / "data"),
              "out": str(tmp_path / "out"), "cuts": "0.6,0.8", "seed": CFG.seed,
              "max_epochs": 1, "temperatures": "0.05", "resamples": CFG.resamples}  # fmt: skip
    result = materialize(
        [backtest], run_config={"ops": {"evaluation__backtest": {"config": config}}}
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["windows"].value == 2
    assert "data:image/png;base64," in metadata["plot"].value
    assert "two-tower / best baseline" in metadata["table"].value
    assert 0 <= metadata[f"backtest_recall@20/{TWO_TOWER}/{WARM}"].value <= 1
    assert len(metadata["new_items"].value) == 2  # one entry per window (counts, reach)
    assert not (tmp_path / "data").exists()  # nothing written outside its output folder
    # Same seed, same numbers: every metric and interval, the choices, the cuts.
    again = json.loads((tmp_path / "out" / "backtest.json").read_text())
    first = json.loads((backtested[0] / "backtest.json").read_text())
    for a, b in zip(first["windows"], again["windows"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert first["mean"] == again["mean"]


def test_backtest_job_loads_beside_the_pipeline_and_stays_out_of_full_pipeline():
    from orchestration.definitions import defs

    job = defs.resolve_job_def("backtest")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "evaluation/backtest"
    }
    full = defs.resolve_job_def("full_pipeline").asset_layer.selected_asset_keys
    assert "evaluation/backtest" not in {k.to_user_string() for k in full} and len(full) == 11


def test_planted_truth_is_the_generators_and_the_affinity_its_log_probability(synthetic):
    from recsys.datasets.planted import planted_affinity, planted_truth

    saved = np.load(synthetic / "synthetic_truth.npz")
    rebuilt = planted_truth(8000, seed=1)
    for name, values in rebuilt.items():
        assert np.array_equal(values, saved[name]), name
    users, items = np.array([3, 1]), np.array([5, 2, 9])
    expected = saved["item_log_pop"][items - 1] + (
        saved["user_factors"][users - 1] @ saved["item_factors"][items - 1].T
    ) / float(saved["temperature"])
    assert np.allclose(planted_affinity(rebuilt, users, items), expected)
