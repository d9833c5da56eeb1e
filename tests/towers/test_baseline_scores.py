"""towers.baseline_scores.baselines end to end on a small timeline: every baseline through
towers.evaluate, its validation choices recorded, EASE sampled or skipped over its memory
budget, the choices and notes written by towers.report.report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tests.towers.test_baselines import DAY0, clustered, frame
from towers.baseline_scores import BASELINE_NOTES, baselines
from towers.ease import EASE, ease_bytes
from towers.evaluate import build_eval_split, rank_metrics
from towers.report import report


def timeline() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clustered events (days 1-31) and 80 fans of their group's first items (day 2), a test
    window (days 40-60) with each user's group items, cold users in both windows, and a
    profile whose occupation is the taste group (age and gender say nothing)."""
    events = clustered()
    test = frame([(u, (u % 4) * 10 + j, 45) for u in range(60) for j in (5, 6, 7)])
    cold = frame([(u, (u % 4) * 10 + j, day) for u, day in [(100 + v, 30) for v in range(20)]
                  + [(200 + v, 50) for v in range(20)] for j in (0, 1)])  # fmt: skip
    fans = frame([(u, (u % 4) * 10 + j, 2) for u in range(400, 480) for j in (0, 1, 2)])
    ids = np.r_[np.arange(60), np.arange(100, 120), np.arange(200, 220), np.arange(400, 480)]
    users = pd.DataFrame({"user_id": ids, "age": 30, "gender": "F",
                          "occupation": [f"job{u % 4}" for u in ids]})  # fmt: skip
    return pd.concat([events, fans, test, cold], ignore_index=True), users


def test_compare_baselines_share_the_evaluation_and_record_choices(tmp_path):
    events, users = timeline()
    day = lambda d: DAY0 + pd.Timedelta(days=d)  # noqa: E731
    val = build_eval_split(events, np.arange(40), day(14), day(40))
    test = build_eval_split(events, np.arange(40), day(40), day(60))
    assert (~test.warm).sum() == 20 and test.warm.sum() > 40
    per_user: dict[str, np.ndarray] = {}
    results, choices = baselines(val, test, events, users, memory_budget=None, k=10,
                                 per_user=per_user)  # fmt: skip
    names = ["popularity", "popularity (recent)", "EASE", "ItemKNN", "segment popularity"]
    assert list(results) == names
    # Per-user test recall (for the gate's paired bootstrap) and each baseline's validation
    # recall at its chosen setting (what a fallback is chosen on).
    assert list(per_user) == names
    for name in names:
        assert per_user[name].shape == (len(test.user_ids),)
        assert per_user[name].mean() == results[name]["all"]["recall@10"]
    on_val = choices["validation recall@10"]
    assert list(on_val) == names
    recent = choices["popularity (recent)"]
    assert on_val["popularity"] == recent["val_recall@10"]["all"]
    assert on_val["popularity (recent)"] == max(recent["val_recall@10"].values())
    assert on_val["EASE"] == choices["EASE"]["val_recall@10"][f"{choices['EASE']['l2']:g}"]
    segment = choices["segment popularity"]
    assert on_val["segment popularity"] == segment["val_recall@10"][segment["segmentation"]]["all"]
    assert choices["validation users"] == len(val.user_ids)
    before_test = events[events.event_timestamp < test.start]
    # Each entry is that model, fitted before the test window, through towers.evaluate.
    ease = EASE(choices["EASE"]["l2"]).fit(before_test, np.arange(40))
    assert results["EASE"] == rank_metrics(ease.score_fn(test), test)
    assert set(choices["EASE"]["val_recall@10"]) >= {"50", "100", "200", "500", "1000", "2000"}
    assert choices["popularity (recent)"]["window_days"] in (7, 14, 30, 60, 90, 180, None)
    assert set(choices["ItemKNN"]) == {"neighbours", "shrink", "val_recall@10"}
    # The profile (occupation = taste group) tells cold users what popularity cannot.
    assert choices["segment popularity"]["segmentation"] == "occupation"
    seg, pop = results["segment popularity"]["cold"], results["popularity"]["cold"]
    assert seg["recall@10"] > pop["recall@10"]
    # Fair "all" columns: EASE and ItemKNN give cold users exactly popularity's ranking.
    assert results["EASE"]["cold"] == results["ItemKNN"]["cold"] == pop

    # Over the memory budget: a sampled EASE on the most popular items that fit ...
    budget = ease_bytes(20)
    sampled, why = baselines(val, test, events, users, budget, k=10, min_ease_items=20)
    assert why["EASE"]["items_modelled"] == 20 and "20 most popular" in why["EASE"]["sampled"]
    sampled_ease = EASE(why["EASE"]["l2"], budget, 20).fit(before_test, np.arange(40))
    assert sampled["EASE"] == rank_metrics(sampled_ease.score_fn(test), test)
    # Over the item cap (the λ search's cost), the same sampled EASE, said so.
    capped, why = baselines(val, test, events, users, k=10, min_ease_items=20, max_ease_items=20)
    assert why["EASE"]["items_modelled"] == 20 and "EASE_MAX_ITEMS" in why["EASE"]["sampled"]
    assert capped["EASE"] == sampled["EASE"]
    # ... or, when that would be too partial, EASE is left out with the reason.
    small, why = baselines(val, test, events, users, memory_budget=ease_bytes(40) - 1, k=10)
    assert "EASE" not in small and set(small) == set(names) - {"EASE"}
    assert "memory budget" in why["EASE"]["skipped"] and "ItemKNN" in why["EASE"]["skipped"]
    assert "only 39 items" in why["EASE"]["skipped"]
    no_profile, why = baselines(val, test, events, None, k=10)
    assert "segment popularity" not in no_profile and "skipped" in why["segment popularity"]

    paths = report(results, tmp_path, "test window", choices, BASELINE_NOTES)
    written = json.loads(paths["json"].read_text())
    assert written["choices"]["EASE"]["l2"] == choices["EASE"]["l2"]
    assert set(written["models"]) == set(names)
    assert "rank users with no history by all-time popularity" in paths["markdown"].read_text()
