"""Item cold start in the backtest (evaluation.backtest_new_items): which items are new, who is
scored on them and against what truth, the genre baselines on hand-computed cases, reach, and
the group in a backtest's report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.backtest import CONTENT, NEW_ITEMS, TWO_TOWER, BacktestConfig, run_backtest
from evaluation.backtest_new_items import new_item_split, reach, restricted
from tests.conftest import ts
from towers.baselines import GenreAffinity, GenrePopularity, best_of, tune_genre_baselines
from towers.evaluate import build_eval_split, per_user_metrics


def _events(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"user_id": u, "item_id": i, "rating": 4.0, "event_timestamp": ts(t)}
                         for u, i, t in rows])  # fmt: skip


CUT, END = ts("2024-02-01"), ts("2024-03-01")
EVENTS = _events([
    (9, 1, "2024-01-10"),  # item 1: taken before the cut by a user absent from the window
    (1, 1, "2024-02-02"), (1, 2, "2024-02-03"),  # user 1 (cold): an old item and a new one
    (2, 5, "2024-02-04"), (2, 5, "2024-02-05"), (2, 1, "2024-02-06"),  # user 2: new item 5
    (2, 6, "2024-01-05"),  # ... and warm (item 6, taken before the cut, is not new)
    (3, 1, "2024-02-07"), (3, 6, "2024-02-08"),  # user 3: only old items
    (4, 3, "2024-03-02"),  # item 3: first taken after the window
    (5, 99, "2024-02-09"),  # item 99: not in the catalogue
])  # fmt: skip
CATALOGUE = np.array([1, 2, 3, 4, 5, 6])  # item 4: never taken


def test_new_items_are_first_taken_in_the_window_and_truth_is_restricted_to_them():
    split = new_item_split(EVENTS, CATALOGUE, CUT, END)
    assert split.item_ids.tolist() == [2, 5]  # not 1 or 6 (taken before), 3 (after), 4, 99
    assert split.user_ids.tolist() == [1, 2]  # user 3 took no new item
    assert [split.item_ids[t].tolist() for t in split.truth] == [[2], [5]]  # old items dropped
    assert split.warm.tolist() == [False, True]
    assert split.seen.nnz == 0  # nothing of a new item can be seen before the cut


def test_an_item_taken_once_before_the_cut_is_never_new():
    early = pd.concat([EVENTS, _events([(8, 5, "2024-01-31 23:59:59")])])  # item 5, just before
    split = new_item_split(early, CATALOGUE, CUT, END)
    assert split.item_ids.tolist() == [2] and split.user_ids.tolist() == [1]


def _genre_case() -> tuple[pd.DataFrame, np.ndarray, list[list[str]]]:
    items = np.array([10, 11, 12, 13, 14])
    genres = [["A"], ["B"], ["A", "B"], ["C"], []]
    events = _events([
        (1, 10, "2024-01-01"), (1, 10, "2024-01-02"), (1, 12, "2024-01-03"),  # user 1: A, A, A+B
        (2, 11, "2024-01-28"),  # user 2: B, recent
    ])  # fmt: skip
    return events, items, genres


def test_genre_popularity_is_the_mean_genre_share_of_the_events():
    events, items, genres = _genre_case()
    split = build_eval_split(_events([(7, 13, "2024-02-02")]), items, CUT, END)
    model = GenrePopularity().fit(events, items, genres, before=CUT)
    # Shares of the 4 events: A 3/4, B 2/4, C 0; item 12 (A, B) the mean 5/8, item 14 none.
    expected = [0.75, 0.5, 0.625, 0.0, 0.0]
    assert model.score_fn(split)(np.array([0]))[0] == pytest.approx(expected)
    recent = GenrePopularity(7).fit(events, items, genres, before=CUT)  # only user 2's event
    assert recent.score_fn(split)(np.array([0]))[0] == pytest.approx([0, 1, 0.5, 0, 0])
    with pytest.raises(ValueError, match="leak"):
        GenrePopularity().fit(events, items, genres).score_fn(
            build_eval_split(events, items, ts("2024-01-02"), CUT)
        )


def test_genre_affinity_sums_the_users_genre_shares_and_falls_back_to_genre_popularity():
    events, items, genres = _genre_case()
    window = _events([(1, 13, "2024-02-02"), (2, 13, "2024-02-02"), (7, 13, "2024-02-02")])
    split = build_eval_split(window, items, CUT, END)
    model = GenreAffinity().fit(events, items, genres, before=CUT)
    scores = model.score_fn(split)(np.arange(3))
    # User 1: A in 3 of 3 events, B in 1 of 3; item 12 (A, B) sums them.
    assert scores[0] == pytest.approx([1, 1 / 3, 4 / 3, 0, 0])
    assert scores[1] == pytest.approx([0, 1, 1, 0, 0])  # user 2: B only
    assert scores[2] == pytest.approx([0.75, 0.5, 0.625, 0, 0])  # user 7: no history


def test_genre_baselines_choose_on_the_validation_new_items():
    items, genres = np.array([10, 11, 12, 13]), [["A"], ["B"], ["A"], ["B"]]
    # Before: A is the popular genre, but user 2 only takes B; both 12 (A) and 13 (B) are new.
    before = _events([(1, 10, "2024-01-01"), (1, 10, "2024-01-02"), (1, 10, "2024-01-03"),
                      (2, 11, "2024-01-04")])  # fmt: skip
    window = _events([(2, 13, "2024-02-03")])
    val = new_item_split(pd.concat([before, window]), items, CUT, END)
    assert val.item_ids.tolist() == [13]  # 12 was never taken: not among the candidates
    val = new_item_split(pd.concat([before, window, _events([(3, 12, "2024-02-04")])]), items,
                         CUT, END)  # fmt: skip
    assert val.item_ids.tolist() == [12, 13] and val.user_ids.tolist() == [2, 3]
    tried = tune_genre_baselines(before, val, items, genres, windows=(None,), k=1)
    # User 2: popularity ranks 12 (A) first (a miss), affinity 13 (B); user 3 (cold) gets
    # genre popularity from both, 12 first: a hit.
    assert {key: recall for key, (recall, _) in tried.items()} == {
        ("genre popularity", None): 0.5, ("genre affinity", None): 1.0}  # fmt: skip
    # With k = 2 both rank the two new items in their top 2 (recall 1): NDCG breaks the tie.
    tried = tune_genre_baselines(before, val, items, genres, windows=(None,), k=2)
    assert {recall for recall, _ in tried.values()} == {1.0}
    assert best_of(tried) == ("genre affinity", None)


def test_reach_counts_new_items_in_anyones_top_k():
    full = build_eval_split(EVENTS, CATALOGUE, CUT, END)  # users 1, 2, 3
    new = new_item_split(EVENTS, CATALOGUE, CUT, END)  # items 2 and 5
    scores = np.zeros((len(full.user_ids), len(CATALOGUE)))
    scores[0, 1] = 1.0  # user 1 ranks item 2 first; nobody ranks item 5 in their top 1
    scores[:, 0] = 0.5  # item 1: the others' first
    assert reach(lambda rows: scores[rows], full, new, k=1) == 0.5
    metrics = per_user_metrics(restricted(lambda rows: scores[rows], full, new), new, (1,))
    assert metrics["recall@1"][0] == 1.0  # user 1 ranks item 2 above item 5


@pytest.fixture(scope="module")
def backtested(tmp_path_factory) -> tuple[Path, dict]:
    """A synthetic dataset where three sets of items appear late (their earlier events
    dropped), so every cut's validation and test windows hold new items."""
    from recsys.datasets.synthetic import generate_synthetic

    folder = tmp_path_factory.mktemp("new-items") / "dataset"
    generate_synthetic(folder, 8000, seed=1, progress=False)
    events = pd.read_parquet(folder / "interactions.parquet")
    when = events.event_timestamp
    popular = events.item_id.value_counts().index.to_numpy()
    for items, q in ((popular[0:40:4], 0.5), (popular[1:40:4], 0.7), (popular[2:40:4], 0.85)):
        events = events[~(events.item_id.isin(items) & (events.event_timestamp < when.quantile(q)))]
    events.to_parquet(folder / "interactions.parquet", index=False)
    cfg = BacktestConfig(quantiles=(0.6, 0.8), max_epochs=1, temperatures=(0.05,), resamples=50)
    out = tmp_path_factory.mktemp("new-items-out")
    lines: list[str] = []
    return out, run_backtest(folder, out, cfg, progress=lines.append) | {"lines": lines}


def test_the_backtest_reports_new_items_against_the_validation_chosen_genre_baseline(backtested):
    out, summary = backtested
    saved = json.loads((out / "backtest.json").read_text())
    for w in saved["windows"]:
        info = w["new_items"]
        assert info["items"] > 0 and info["users"] > 0
        assert set(info["reach@20"]) >= {TWO_TOWER} and 0 <= info["reach@20"][TWO_TOWER] <= 1
        cells = {m: c[NEW_ITEMS]["recall@20"] for m, c in w["metrics"].items() if NEW_ITEMS in c}
        assert set(cells) == {TWO_TOWER, "genre popularity", "genre affinity", CONTENT}
        assert {c["users"] for c in cells.values()} == {info["users"]}
        chosen = w["choices"][CONTENT]["chosen"]
        assert cells[CONTENT] == cells[chosen]  # the one chosen on validation, not on test
        assert w["best_baseline"][NEW_ITEMS]["model"] == CONTENT
    assert NEW_ITEMS in saved["mean"][TWO_TOWER] and TWO_TOWER in saved["new_items_reach_mean"]
    assert "## new items: recall@20" in (out / "backtest.md").read_text()
    assert all("new items" in line for line in summary["lines"])
