"""Baselines on tiny data where the answer is known: EASE against its closed form and its λ
grid, its memory budget, popularity counts and the recent window, the popularity fallback."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from towers.baselines import Popularity, best_of, sample_users, tune_popularity_window
from towers.ease import (
    EASE,
    EaseTooLarge,
    ease_bytes,
    ease_lambda_search,
    ease_max_items,
    tune_ease_lambda,
)
from towers.evaluate import build_eval_split, rank_metrics

DAY0 = pd.Timestamp("2020-01-01", tz="UTC")
START, END = DAY0 + pd.Timedelta(days=10), DAY0 + pd.Timedelta(days=20)


def frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """Interactions from (user, item, day after DAY0) tuples."""
    users, items, days = (np.array(c, np.int64) for c in zip(*rows, strict=True))
    return pd.DataFrame(
        {"user_id": users, "item_id": items, "event_timestamp": DAY0 + pd.to_timedelta(days, "D")}
    )


def matrix_rows(x: np.ndarray, day: int = 1) -> list[tuple[int, int, int]]:
    """(user, item, day) for every 1 of a binary users x items matrix; ids = positions."""
    return [(int(u), int(i), day) for u, i in zip(*np.nonzero(x), strict=True)]


def test_ease_equals_the_closed_form():
    x = (np.random.default_rng(1).random((8, 5)) < 0.5).astype(float)  # (users, items)
    x[0, 0] = x[0, 1] = 1  # a user seen twice below stays binary
    rows = matrix_rows(x) + [(0, 0, 2)]
    model = EASE(l2=3.0).fit(frame(rows), np.arange(5))
    # Steck (2019), eq. 8: B = I - P diagMat(1 / diag(P)), P = (XᵀX + λI)⁻¹, solved here.
    p = np.linalg.solve(x.T @ x + 3.0 * np.eye(5), np.eye(5))
    expected = np.eye(5) - p / np.diag(p)
    assert np.allclose(model.weights_, expected, atol=1e-6)
    assert (np.diag(model.weights_) == 0).all()
    assert model.weights_.dtype == np.float32
    assert model.matrix_.toarray().tolist() == x.tolist()


def test_ease_scores_are_history_times_weights_and_cold_users_get_popularity():
    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]])
    train = frame(matrix_rows(x))
    window = frame([(0, 3, 12), (2, 1, 15), (9, 0, 11)])  # user 9 has no history: cold
    split = build_eval_split(pd.concat([train, window]), np.arange(4), START, END)
    model = EASE(l2=1.0).fit(train, np.arange(4))
    scores = model.scores(split)
    assert split.user_ids.tolist() == [0, 2, 9]
    assert np.allclose(scores[:2], x[[0, 2]] @ model.weights_, atol=1e-6)
    # User 9 has no history: the all-time popularity counts, not a random (all-zero) ranking.
    assert scores[2].tolist() == [2, 2, 2, 1]
    assert scores[:2].any(axis=1).all()
    blocks = model.score_fn(split)
    assert np.array_equal(blocks(np.array([2, 0])), scores[[2, 0]])


def test_ease_recommends_the_planted_co_item():
    # Items A=0, B=1; C..E are noise. Everyone who had A also had B.
    rows = [(u, i, 1) for u in range(6) for i in (0, 1)]
    rows += [(u, i, 2) for u, i in [(6, 2), (6, 3), (7, 3), (7, 4), (8, 2), (8, 4), (9, 4)]]
    rows += [(20, 0, 3)]  # the new user has only A
    train = frame(rows)
    split = build_eval_split(pd.concat([train, frame([(20, 1, 12)])]), np.arange(5), START, END)
    model = EASE(l2=1.0).fit(train, np.arange(5))
    scores = model.scores(split)[0]
    assert int(np.argmax(np.where(split.seen.toarray()[0] > 0, -np.inf, scores))) == 1
    assert rank_metrics(model.scores(split), split, ks=(1,))["all"]["recall@1"] == 1.0


def test_ease_guards():
    big = frame([(0, 0, 1)])
    # Over the memory budget: refused before any N x N allocation, naming sizes and the way out.
    with pytest.raises(EaseTooLarge, match=r"200,000 items need 960\.0 GB.*budget.*ItemKNN"):
        EASE().fit(big, np.arange(200_000))
    with pytest.raises(EaseTooLarge, match="30 items"):
        EASE(memory_budget=ease_bytes(30) - 1).fit(big, np.arange(30))
    assert EASE(memory_budget=ease_bytes(30)).fit(big, np.arange(30)).weights_.shape == (30, 30)
    assert ease_max_items(ease_bytes(30)) == 30 and ease_max_items(ease_bytes(30) - 1) == 29
    with pytest.raises(ValueError, match="l2 must be positive"):
        EASE(l2=0.0).fit(big, np.arange(3))
    # Fitting on events inside the window is a leak; scoring refuses it.
    everything = frame([(0, 0, 1), (0, 1, 12), (1, 2, 13)])
    split = build_eval_split(everything, np.arange(3), START, END)
    with pytest.raises(ValueError, match="leak"):
        EASE().fit(everything, np.arange(3)).scores(split)
    with pytest.raises(ValueError, match="item_ids differs"):
        EASE().fit(everything[everything.event_timestamp < START], np.arange(4)).scores(split)


def test_popularity_counts_ties_and_window():
    history = frame([(1, 2, 1), (2, 2, 8), (3, 2, 9), (1, 1, 8), (2, 3, 9), (4, 99, 9)])
    window = frame([(1, 3, 12), (5, 1, 13)])
    split = build_eval_split(pd.concat([history, window]), np.array([1, 2, 3, 4]), START, END)
    model = Popularity().fit(history, np.array([1, 2, 3, 4]))
    scores = model.scores(split)
    assert scores.shape == (2, 4)
    assert scores.tolist() == [[1, 3, 1, 0], [1, 3, 1, 0]]  # item 99 is not in the catalogue
    assert scores[0, 0] == scores[0, 2]  # tied counts tie; the evaluation breaks ties at random
    assert np.array_equal(model.score_fn(split)(np.array([1])), scores[1:])
    # The last 2 days before day 10 are [day 8, day 10): the day-1 event drops out.
    recent = Popularity(window_days=2).fit(history, np.array([1, 2, 3, 4]), before=START)
    assert recent.counts_.tolist() == [1, 2, 1, 0]
    # The cut also drops events at or after it.
    cut = Popularity().fit(history, np.array([1, 2, 3, 4]), before=DAY0 + pd.Timedelta(days=9))
    assert cut.counts_.tolist() == [1, 2, 0, 0]
    with pytest.raises(ValueError, match="leak"):
        Popularity().fit(pd.concat([history, window]), np.array([1, 2, 3, 4])).scores(split)


def clustered(seed: int = 0) -> pd.DataFrame:
    """60 users in 4 taste groups over 40 Zipf-popular items: 9 events on days 1-9, 3 on 29-31."""
    rng = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, 41) ** 0.8
    rows = []
    for u in range(60):
        p = popularity.copy()
        p[(u % 4) * 10 : (u % 4) * 10 + 10] *= 6
        items = rng.choice(40, size=12, replace=False, p=p / p.sum())
        rows += [(u, int(i), 1 + j if j < 9 else 20 + j) for j, i in enumerate(items)]
    return frame(rows)


def test_tune_ease_lambda_picks_the_best_validation_recall():
    events = clustered()
    val_start, val_end = DAY0 + pd.Timedelta(days=14), DAY0 + pd.Timedelta(days=40)
    val = build_eval_split(events, np.arange(40), val_start, val_end)
    train = events[events.event_timestamp < val_start]
    grid = (0.1, 5.0, 200.0, 2000.0)
    recalls = [
        rank_metrics(EASE(l2).fit(train, np.arange(40)).scores(val), val, ks=(10,))["all"][
            "recall@10"
        ]
        for l2 in grid
    ]
    assert len(set(recalls)) > 1  # the choice matters on this data
    chosen = tune_ease_lambda(train, val, np.arange(40), grid=grid, k=10)
    assert chosen == grid[int(np.argmax(recalls))]

    # Test-period events (after the validation window) cannot reach the choice: they change
    # neither the validation split nor the training rows, and the signature takes no test data.
    later = pd.concat([events, frame([(u, (u * 7) % 40, 50) for u in range(60)])])
    val_again = build_eval_split(later, np.arange(40), val_start, val_end)
    assert tune_ease_lambda(train, val_again, np.arange(40), grid=grid, k=10) == chosen
    assert list(inspect.signature(tune_ease_lambda).parameters) == [
        "train_interactions",
        "val_split",
        "item_ids",
        "grid",
        "k",
    ]
    with pytest.raises(ValueError, match="leak"):
        tune_ease_lambda(events, val, np.arange(40), grid=grid, k=10)


def test_ease_grid_widens_while_the_best_lambda_is_at_an_edge():
    events = clustered()
    val_start, val_end = DAY0 + pd.Timedelta(days=14), DAY0 + pd.Timedelta(days=40)
    val = build_eval_split(events, np.arange(40), val_start, val_end)
    train = events[events.event_timestamp < val_start]
    # On this data λ ≈ 16-200 is best: a grid of small λ must grow upwards past its edge.
    tried = ease_lambda_search(train, val, np.arange(40), grid=(0.5, 1.0), k=10, factor=4)
    assert list(tried) == [0.5, 1.0, 4.0, 16.0, 64.0]
    best = best_of(tried)
    assert best == 16.0 and tried[best] > max(tried[0.5], tried[1.0])
    assert min(tried) < best < max(tried)  # it stopped once the best was interior
    assert tune_ease_lambda(train, val, np.arange(40), grid=(0.5, 1.0), k=10) == 16.0
    # ... and a grid of large λ downwards.
    assert list(ease_lambda_search(train, val, np.arange(40), grid=(20.0, 40.0), k=10)) == [
        20.0, 40.0, 5.0,
    ]  # fmt: skip
    # A bound stops the widening even with the best still at the edge.
    bounded = ease_lambda_search(train, val, np.arange(40), (0.5, 1.0), 10, 4, bounds=(0.1, 5))
    assert list(bounded) == [0.5, 1.0, 4.0]
    # Flat recall (λ so large EASE ranks like popularity): one step out, then it stops on the
    # tie instead of running to the bound.
    flat = ease_lambda_search(train, val, np.arange(40), grid=(1e4, 2e4), k=10)
    assert list(flat) == [1e4, 2e4, 2500.0]
    with pytest.raises(ValueError, match="factor"):
        ease_lambda_search(train, val, np.arange(40), grid=(1.0,), factor=1.0)
    with pytest.raises(EaseTooLarge, match="memory budget"):
        ease_lambda_search(train, val, np.arange(40), memory_budget=ease_bytes(40) - 1)


def shifting_tastes() -> pd.DataFrame:
    """Items 0-1 were the hits of days 1-50, items 2-3 are the hits since day 90."""
    old = [(u, i, 1 + u) for u in range(30) for i in (0, 1)]
    recent = [(100 + u, i, 90 + u % 10) for u in range(10) for i in (2, 3)]
    noise = [(300 + i, i, 5) for i in range(4, 10)]
    val = [(200 + u, i, 100 + u % 10) for u in range(10) for i in (2, 3)]  # new users
    return frame(old + recent + noise + val)


def test_recent_popularity_beats_all_time_when_tastes_shift():
    events = shifting_tastes()
    val_start = DAY0 + pd.Timedelta(days=100)
    val = build_eval_split(events, np.arange(10), val_start, val_start + pd.Timedelta(days=10))
    train = events[events.event_timestamp < val_start]
    tried = tune_popularity_window(train, val, np.arange(10), windows=(7, 14, 30, None), k=2)
    assert list(tried) == [7, 14, 30, None]
    assert tried[None] == 0.0  # all time: items 0 and 1 (30 users each) fill the top 2
    assert tried[7] == tried[14] == tried[30] == 1.0  # the last weeks: items 2 and 3
    assert best_of(tried) == 7  # ties go to the first window tried
    # Counting stops at the validation start: the window's own events cannot reach the choice.
    assert tune_popularity_window(events, val, np.arange(10), (7, 14, 30, None), k=2) == tried


def test_history_models_rank_cold_users_by_popularity():
    """EASE and ItemKNN score users without history exactly as popularity does."""
    from towers.itemknn import ItemKNN

    events = clustered()
    cold = frame([(100 + u, (u * 3) % 40, 30) for u in range(30)])
    val_start, val_end = DAY0 + pd.Timedelta(days=14), DAY0 + pd.Timedelta(days=40)
    val = build_eval_split(pd.concat([events, cold]), np.arange(40), val_start, val_end)
    train = events[events.event_timestamp < val_start]
    assert (~val.warm).sum() == 30
    popularity = rank_metrics(Popularity().fit(train, np.arange(40)).scores(val), val)
    for model in (EASE(50.0).fit(train, np.arange(40)), ItemKNN(10, 0.0).fit(train, np.arange(40))):
        metrics = rank_metrics(model.score_fn(val), val)
        assert metrics["cold"] == popularity["cold"]
        assert metrics["cold"]["recall@50"] > 0
        assert metrics["warm"] != popularity["warm"]  # warm users are the model's own


def test_sampled_ease_models_the_most_popular_items_and_ranks_the_rest_below():
    x = (np.random.default_rng(2).random((12, 6)) < 0.5).astype(float)
    x[:, 1] = 1  # item 1 the most popular
    x[:, 4] = 0
    x[:3, 4] = 1  # item 4 the least popular but one
    x[:, 5] = 0
    x[0, 5] = 1
    train = frame(matrix_rows(x))
    window = frame([(u, 5, 12) for u in range(12)])
    split = build_eval_split(pd.concat([train, window]), np.arange(6), START, END)
    counts = x.sum(axis=0)
    top = np.sort(np.argsort(-counts, kind="stable")[:3])
    model = EASE(l2=2.0, top_items=3).fit(train, np.arange(6))
    assert model.columns_.tolist() == top.tolist() and model.weights_.shape == (3, 3)
    # The modelled part is EASE on those items' columns ...
    p = np.linalg.solve(x[:, top].T @ x[:, top] + 2.0 * np.eye(3), np.eye(3))
    assert np.allclose(model.weights_, np.eye(3) - p / np.diag(p), atol=1e-6)
    scores = model.score_fn(split)(np.arange(len(split.user_ids)))
    assert np.allclose(scores[:, top], x[split.user_ids][:, top] @ model.weights_, atol=1e-5)
    # ... and every other item ranks below all of them, the more popular first.
    rest = np.setdiff1d(np.arange(6), top)
    assert (scores[:, rest].max(axis=1) < scores[:, top].min(axis=1)).all()
    by_popularity = rest[np.argsort(-counts[rest], kind="stable")]
    assert (np.diff(scores[:, by_popularity], axis=1) <= 0).all()


def test_choices_on_a_sample_of_validation_users():
    events = clustered()
    val_start, val_end = DAY0 + pd.Timedelta(days=14), DAY0 + pd.Timedelta(days=40)
    val = build_eval_split(events, np.arange(40), val_start, val_end)
    assert sample_users(val, None) is val and sample_users(val, 60) is val
    part = sample_users(val, 25, seed=3)
    rows = np.searchsorted(val.user_ids, part.user_ids)
    assert len(part.user_ids) == 25 and (np.diff(part.user_ids) > 0).all()
    assert all(np.array_equal(t, val.truth[r]) for t, r in zip(part.truth, rows, strict=True))
    assert (part.seen != val.seen[rows]).nnz == 0 and np.array_equal(part.warm, val.warm[rows])
    assert np.array_equal(sample_users(val, 25, seed=3).user_ids, part.user_ids)  # seeded
    assert not np.array_equal(sample_users(val, 25, seed=4).user_ids, part.user_ids)
    with pytest.raises(ValueError, match="max_users"):
        sample_users(val, 0)
