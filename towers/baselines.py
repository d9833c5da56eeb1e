"""Baselines the two-tower model must beat, scored through the same ``towers.evaluate`` path.

- :class:`Popularity`: every user gets the catalogue ranked by interaction count, over all
  history or only the last ``window_days`` before the cut (:func:`tune_popularity_window`
  chooses the window on validation).
- :class:`HistoryScorer`: the base of the models that score a user from their history (EASE
  in ``towers.ease``, ItemKNN in ``towers.itemknn``). Users with no history get the all-time
  popularity ranking, so their "all users" figures are fair.
- Segment popularity (profile segments, for cold users) is in ``towers.segments``.

Every baseline is fitted on the interactions *before* the evaluation window (everything
before its ``start``: for the test window that is train + validation), and that history is
also what the history models score a user from. Scoring a split whose window starts at or
before the latest fitted event raises: that would be a leak.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from towers.evaluate import EvalSplit, ScoreFn, item_index, rank_metrics, to_utc

log = logging.getLogger(__name__)

# Trailing windows (days) recent popularity chooses from on validation; None = all history.
POPULARITY_WINDOWS: tuple[float | None, ...] = (7, 14, 30, 60, 90, 180, None)


def _check_split(split: EvalSplit, item_ids: np.ndarray, latest: pd.Timestamp | None) -> None:
    """The split ranks the fitted catalogue, and its window starts after the fitted data."""
    if not np.array_equal(split.item_ids, item_ids):
        raise ValueError("split.item_ids differs from the item_ids the baseline was fitted on")
    if split.start is not None and latest is not None and latest >= split.start:
        raise ValueError(
            f"fitted on events up to {latest}, but the window starts at {split.start}: "
            "fit only on interactions before the window (a leak otherwise)"
        )


def _latest(when: pd.Series) -> pd.Timestamp | None:
    return None if when.empty else to_utc(when.max())


def val_recall(score_fn: ScoreFn, split: EvalSplit, k: int) -> float:
    """Recall@k over all users of ``split``: what every baseline's choice maximises."""
    return rank_metrics(score_fn, split, ks=(k,))["all"][f"recall@{k}"]


# Baseline choices (and the two-tower's popularity prior) are made on at most this many
# validation users: each choice scores the window once per grid point (about 30 in all), and
# grid points are compared on the same users, a paired difference far more precise than
# either mean.
MAX_VAL_USERS = 2000


def sample_rows(n: int, max_users: int | None, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_users`` of ``n`` users drawn at random (``seed``);
    all of them when there are no more than that."""
    if max_users is None or n <= max_users:
        return np.arange(n)
    if max_users < 1:
        raise ValueError(f"max_users must be positive (or None for all), got {max_users}")
    return np.sort(np.random.default_rng(seed).choice(n, max_users, replace=False))


def sample_users(split: EvalSplit, max_users: int | None, seed: int = 0) -> EvalSplit:
    """``split`` cut to the users :func:`sample_rows` draws, order kept: choosing on a sample
    keeps each choice's cost bounded on large validation windows."""
    if max_users is None or len(split.user_ids) <= max_users:
        return split
    rows = sample_rows(len(split.user_ids), max_users, seed)
    return replace(split, user_ids=split.user_ids[rows], truth=[split.truth[r] for r in rows],
                   seen=split.seen[rows], warm=split.warm[rows])  # fmt: skip


def _check_val(split: EvalSplit) -> None:
    if not len(split.user_ids):
        raise ValueError("the validation split has no users: nothing to choose on")


class Popularity:
    """Item interaction counts, the same ranking for every user."""

    def __init__(self, window_days: float | None = None) -> None:
        self.window_days = window_days  # None: all history; else the last days before the cut

    def fit(
        self, interactions: pd.DataFrame, item_ids: np.ndarray, before: Any = None
    ) -> Popularity:
        """Count interactions per catalogue item before ``before`` (default: all rows given),
        within ``window_days`` of it (default cut: the latest event)."""
        index = item_index(item_ids)
        when = pd.to_datetime(interactions["event_timestamp"], utc=True)
        keep = np.ones(len(interactions), bool)
        if before is not None:
            keep &= (when < to_utc(before)).to_numpy()
        if self.window_days is not None:
            cut = to_utc(before) if before is not None else when.max()
            keep &= (when >= cut - pd.Timedelta(days=self.window_days)).to_numpy()
        cols = index.get_indexer(interactions["item_id"].to_numpy(np.int64)[keep])
        self.item_ids_ = index.to_numpy(np.int64)
        self.counts_ = np.bincount(cols[cols >= 0], minlength=len(index)).astype(np.float32)
        self.latest_ = _latest(when[keep])
        return self

    def scores(self, split: EvalSplit) -> np.ndarray:
        """(U, N) counts, one shared row: a read-only broadcast view, no U x N memory."""
        _check_split(split, self.item_ids_, self.latest_)
        return np.broadcast_to(self.counts_, (len(split.user_ids), len(self.counts_)))

    def score_fn(self, split: EvalSplit) -> ScoreFn:
        _check_split(split, self.item_ids_, self.latest_)
        return lambda rows: np.broadcast_to(self.counts_, (len(rows), len(self.counts_)))


def tune_popularity_window(
    train_interactions: pd.DataFrame,
    val_split: EvalSplit,
    item_ids: np.ndarray,
    windows: Sequence[float | None] = POPULARITY_WINDOWS,
    k: int = 20,
) -> dict[float | None, float]:
    """Validation recall@k of popularity over each trailing window (days; None = all history)
    before the validation window's start. The best is the first with the highest recall."""
    if not windows:
        raise ValueError("windows is empty: give at least one window (None = all history)")
    _check_val(val_split)
    tried: dict[float | None, float] = {}
    for days in windows:
        model = Popularity(days).fit(train_interactions, item_ids, before=val_split.start)
        tried[days] = val_recall(model.score_fn(val_split), val_split, k)
        span = "all history" if days is None else f"the last {days:g} days"
        log.info("popularity over %s: validation recall@%d = %.4f", span, k, tried[days])
    return tried


def best_of(tried: dict[Any, float]) -> Any:
    """The key with the highest value; ties go to the first tried."""
    return max(tried, key=lambda key: tried[key])


def interaction_matrix(
    interactions: pd.DataFrame, index: pd.Index
) -> tuple[np.ndarray, sp.csr_matrix]:
    """Users (ascending) and their binary user x item matrix over the catalogue ``index``."""
    cols = index.get_indexer(interactions["item_id"].to_numpy(np.int64))
    known = cols >= 0
    if (~known).any():
        log.info("%d interaction(s) with items outside the catalogue ignored", int((~known).sum()))
    users, rows = np.unique(interactions["user_id"].to_numpy(np.int64)[known], return_inverse=True)
    x = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols[known])), shape=(len(users), len(index))
    )
    x.data[:] = 1.0  # repeated (user, item) pairs were summed: binary
    return users, x


class HistoryScorer:
    """A model scoring a user from their interactions before the window (``x_u``, a row of
    ``matrix_``); users with no history get the all-time popularity counts instead."""

    item_ids_: np.ndarray  # (N,) the catalogue
    user_ids_: np.ndarray  # (n,) ascending: users with history
    matrix_: sp.csr_matrix  # (n, N) binary history
    fallback_: np.ndarray  # (N,) float32 popularity counts for users without history
    latest_: pd.Timestamp | None

    def _history(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> None:
        index = item_index(item_ids)
        self.item_ids_ = index.to_numpy(np.int64)
        self.user_ids_, self.matrix_ = interaction_matrix(interactions, index)
        self.fallback_ = Popularity().fit(interactions, self.item_ids_).counts_
        self.latest_ = _latest(pd.to_datetime(interactions["event_timestamp"], utc=True))

    def _history_scores(self, x: sp.csr_matrix) -> np.ndarray:
        """(B, N) float32 scores of B users from their (B, N) history rows."""
        raise NotImplementedError

    def _rows(self, user_ids: np.ndarray) -> np.ndarray:
        """(B, N) scores of ``user_ids``; popularity for users without history."""
        out = np.empty((len(user_ids), len(self.item_ids_)), np.float32)
        pos = np.searchsorted(self.user_ids_, user_ids).clip(max=max(len(self.user_ids_) - 1, 0))
        known = self.user_ids_[pos] == user_ids if len(self.user_ids_) else pos < 0
        out[~known] = self.fallback_
        if known.any():
            out[known] = self._history_scores(self.matrix_[pos[known]])
        return out

    def scores(self, split: EvalSplit) -> np.ndarray:
        """(U, N) float32 scores for the split's users (rows in ``split.user_ids`` order)."""
        _check_split(split, self.item_ids_, self.latest_)
        return self._rows(split.user_ids)

    def score_fn(self, split: EvalSplit) -> ScoreFn:
        """Scores by blocks of user rows, for splits where U x N does not fit in memory."""
        _check_split(split, self.item_ids_, self.latest_)
        return lambda rows: self._rows(split.user_ids[rows])

    def fold_in_fn(self, split: EvalSplit) -> ScoreFn:
        """Scores from each user's row of ``split.seen`` instead of the fitted histories: the
        fold-in of users the fit never saw (a new user's first events, given with the split)."""
        _check_split(split, self.item_ids_, self.latest_)
        return lambda rows: self._history_scores(split.seen[rows])


def genre_matrix(genres: Sequence[Any]) -> tuple[list[str], sp.csr_matrix]:
    """The genre vocabulary (sorted) and the (N, G) binary genre bag of each item's genre
    list (missing or empty: a row of zeros)."""
    lists = [[str(x) for x in g] if isinstance(g, list | tuple | np.ndarray) else []
             for g in genres]  # fmt: skip
    vocab = sorted({g for gs in lists for g in gs})
    pos = {g: j for j, g in enumerate(vocab)}
    rows = np.repeat(np.arange(len(lists)), [len(gs) for gs in lists])
    cols = np.array([pos[g] for gs in lists for g in gs], np.int64)
    bag = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)),
                        shape=(len(lists), len(vocab)))  # fmt: skip
    bag.data[:] = 1.0  # a genre listed twice counts once
    return vocab, bag


class GenrePopularity:
    """Content only, so it ranks items nobody has taken yet: an item's score is the mean over
    its genres of the genre's share of the events (share of events whose item has the genre),
    over all history or the last ``window_days`` before the cut. Scores any split whose
    items are in the fitted catalogue (the backtest's candidate set: the new items)."""

    def __init__(self, window_days: float | None = None) -> None:
        self.window_days = window_days  # None: all history; else the last days before the cut

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray, genres: Sequence[Any],
            before: Any = None) -> GenrePopularity:  # fmt: skip
        """Genre shares of the events before ``before`` (default: all rows given), within
        ``window_days`` of it; ``genres[i]`` is the genre list of ``item_ids[i]``."""
        self.index_ = item_index(item_ids)
        self.vocab_, self.bag_ = genre_matrix(genres)  # (N, G)
        when = pd.to_datetime(interactions["event_timestamp"], utc=True)
        fitted = np.ones(len(interactions), bool) if before is None else (
            (when < to_utc(before)).to_numpy())  # fmt: skip
        keep = fitted.copy()
        if self.window_days is not None:
            cut = to_utc(before) if before is not None else when.max()
            keep &= (when >= cut - pd.Timedelta(days=self.window_days)).to_numpy()
        cols = self.index_.get_indexer(interactions["item_id"].to_numpy(np.int64)[keep])
        counts = np.bincount(cols[cols >= 0], minlength=len(self.index_))  # (N,) events
        self.share_ = (self.bag_.T @ counts) / max(1, counts.sum())  # (G,)
        self.latest_ = _latest(when[fitted])
        return self

    def _bag(self, split: EvalSplit) -> sp.csr_matrix:
        """(M, G) genre bags of the split's items; checks the split's window starts after
        everything fitted."""
        cols = self.index_.get_indexer(split.item_ids)
        if (cols < 0).any():
            raise ValueError("split.item_ids has items outside the fitted catalogue")
        _check_split(split, split.item_ids, self.latest_)
        return self.bag_[cols]

    def item_scores(self, bag: sp.csr_matrix) -> np.ndarray:
        """(M,) the mean genre share of each bag row; 0 for an item without genres."""
        n = np.asarray(bag.sum(axis=1)).ravel()
        return np.asarray(bag @ self.share_).ravel() / np.maximum(n, 1)

    def score_fn(self, split: EvalSplit) -> ScoreFn:
        scores = self.item_scores(self._bag(split)).astype(np.float32)  # (M,)
        return lambda rows: np.broadcast_to(scores, (len(rows), len(scores)))


class GenreAffinity(GenrePopularity):
    """The user's taste in genres: score(u, i) = sum over i's genres of u's share of their
    events (all of u's history before the cut) in that genre. Users without history get
    :class:`GenrePopularity`'s scores (``window_days`` applies to those only)."""

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray, genres: Sequence[Any],
            before: Any = None) -> GenreAffinity:  # fmt: skip
        super().fit(interactions, item_ids, genres, before)
        when = pd.to_datetime(interactions["event_timestamp"], utc=True)
        keep = np.ones(len(interactions), bool) if before is None else (
            (when < to_utc(before)).to_numpy())  # fmt: skip
        cols = self.index_.get_indexer(interactions["item_id"].to_numpy(np.int64)[keep])
        users = interactions["user_id"].to_numpy(np.int64)[keep][cols >= 0]
        self.user_ids_, rows = np.unique(users, return_inverse=True)
        events = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols[cols >= 0])),
                               shape=(len(self.user_ids_), len(self.index_)))  # fmt: skip
        totals = np.asarray(events.sum(axis=1)).ravel()  # (U,) events, repeats included
        self.user_share_ = sp.diags(1 / np.maximum(totals, 1)) @ (events @ self.bag_)  # (U, G)
        return self

    def score_fn(self, split: EvalSplit) -> ScoreFn:
        bag = self._bag(split)  # (M, G)
        fallback = self.item_scores(bag).astype(np.float32)  # (M,)
        pos = np.searchsorted(self.user_ids_, split.user_ids).clip(
            max=max(len(self.user_ids_) - 1, 0)
        )
        known = (self.user_ids_[pos] == split.user_ids) if len(self.user_ids_) else pos < 0

        def scores(rows: np.ndarray) -> np.ndarray:
            out = np.tile(fallback, (len(rows), 1))  # (B, M)
            hit = known[rows]
            if hit.any():
                out[hit] = (self.user_share_[pos[rows[hit]]] @ bag.T).toarray()
            return out

        return scores


GENRE_BASELINES = {"genre popularity": GenrePopularity, "genre affinity": GenreAffinity}


def tune_genre_baselines(
    before_val: pd.DataFrame, val_split: EvalSplit, item_ids: np.ndarray,
    genres: Sequence[Any], windows: Sequence[float | None] = POPULARITY_WINDOWS, k: int = 20,
) -> dict[tuple[str, float | None], tuple[float, float]]:  # fmt: skip
    """Validation (recall@k, NDCG@k) of each genre baseline (:data:`GENRE_BASELINES`) with
    each trailing window (days; None = all history), fitted on the events before the
    validation window. NDCG breaks recall's ties: a window with at most k new items gives
    every ranking a recall@k of 1, but not the same order."""
    _check_val(val_split)
    tried: dict[tuple[str, float | None], tuple[float, float]] = {}
    for name, cls in GENRE_BASELINES.items():
        for days in windows:
            model = cls(days).fit(before_val, item_ids, genres, before=val_split.start)
            m = rank_metrics(model.score_fn(val_split), val_split, ks=(k,))["all"]
            tried[(name, days)] = (m[f"recall@{k}"], m[f"ndcg@{k}"])
    return tried
