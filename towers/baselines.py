"""Baselines the two-tower model must beat, scored through the same ``towers.evaluate`` path.

- :class:`Popularity`: every user gets the catalogue ranked by interaction count, over all
  history or only the last ``window_days`` before the cut (:func:`tune_popularity_window`
  chooses the window on validation).
- :class:`EASE`: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. An
  item-item linear model with a closed form: with X the binary users x items matrix,
  ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` column-wise, ``diag(B) = 0``; a user's scores
  are ``x_u B``. λ is chosen on validation (:func:`ease_lambda_search`, which widens the grid
  while the best λ sits at an edge). The dense inverse needs :func:`ease_bytes`; over the
  memory budget, fitting raises :class:`EaseTooLarge` before allocating anything.
- ItemKNN (``towers.itemknn``) and segment popularity (``towers.segments``) live apart.

Models that score from a user's history (EASE, ItemKNN: :class:`HistoryScorer`) give users
with no history the all-time popularity ranking, so their "all users" figures are fair.

Every baseline is fitted on the interactions *before* the evaluation window (everything
before its ``start``: for the test window that is train + validation), and that history is
also what the history models score a user from. Scoring a split whose window starts at or
before the latest fitted event raises: that would be a leak.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack

from towers.evaluate import EvalSplit, ScoreFn, item_index, rank_metrics, to_utc

log = logging.getLogger(__name__)

# Trailing windows (days) recent popularity chooses from on validation; None = all history.
POPULARITY_WINDOWS: tuple[float | None, ...] = (7, 14, 30, 60, 90, 180, None)
EASE_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
# Peak bytes per N² of the λ search: the float64 Gram, its float64 working copy, and the
# float32 weights of the previous and the current λ.
EASE_BYTES_PER_CELL = 8 + 8 + 4 + 4
# Share of the memory available at fit time the dense EASE may take by default.
EASE_MEMORY_SHARE = 0.5


class EaseTooLarge(MemoryError):
    """The dense items x items inverse would not fit in the memory budget."""


def ease_bytes(n_items: int) -> int:
    """Peak bytes EASE's dense fit (and λ search) needs for ``n_items`` items."""
    return EASE_BYTES_PER_CELL * n_items * n_items


def default_memory_budget() -> int:
    """Bytes EASE may use by default: a share of the memory available now."""
    import psutil

    return int(psutil.virtual_memory().available * EASE_MEMORY_SHARE)


def check_ease_fits(n_items: int, budget: int | None = None) -> None:
    """Raise :class:`EaseTooLarge`, naming sizes and what to use, when EASE would not fit."""
    budget = default_memory_budget() if budget is None else int(budget)
    need = ease_bytes(n_items)
    if need > budget:
        raise EaseTooLarge(
            f"EASE inverts a dense items x items matrix: {n_items:,} items need "
            f"{need / 1e9:.1f} GB, over the memory budget of {budget / 1e9:.1f} GB; use "
            "ItemKNN (sparse) or restrict the catalogue (e.g. the most popular items)"
        )


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


def gram(x: sp.csr_matrix) -> np.ndarray:
    """XᵀX as a dense (N, N) float64 array."""
    x64 = x.astype(np.float64)
    return np.asarray((x64.T @ x64).toarray())


def ease_weights(g: np.ndarray, l2: float, block: int = 2048) -> np.ndarray:
    """EASE's B (N, N) float32 from the Gram matrix ``g`` (left unchanged) and λ = ``l2``."""
    if l2 <= 0:
        raise ValueError(f"l2 must be positive (it makes XᵀX + λI invertible), got {l2}")
    n = len(g)
    p = g + l2 * np.eye(n)  # (N, N) float64, symmetric positive definite
    # Cholesky inverse in place (half the flops of a general inverse, no second N x N
    # buffer). p.T is Fortran-ordered, so LAPACK works on p's memory; it fills the upper
    # triangle of p.T, the lower triangle of p, which is then mirrored.
    c, info = lapack.dpotrf(p.T, lower=0, overwrite_a=1, clean=0)
    if info == 0:
        c, info = lapack.dpotri(c, lower=0, overwrite_c=1)
    if info != 0 or not np.shares_memory(c, p):
        raise np.linalg.LinAlgError(f"Cholesky inverse of XᵀX + λI failed (LAPACK info={info})")
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        p[:lo, lo:hi] = p[lo:hi, :lo].T
        d = p[lo:hi, lo:hi]
        p[lo:hi, lo:hi] = np.tril(d) + np.tril(d, -1).T
    diag = np.diag(p).copy()  # (N,)
    p /= -diag  # B_ij = -P_ij / P_jj
    np.fill_diagonal(p, 0.0)
    return p.astype(np.float32)


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


class EASE(HistoryScorer):
    """Steck's EASE (WWW 2019): closed-form item-item weights with an L2 penalty λ."""

    def __init__(self, l2: float = 500.0, memory_budget: int | None = None) -> None:
        self.l2 = l2  # λ; choose it on validation with ease_lambda_search
        self.memory_budget = memory_budget  # bytes; None: a share of the available memory

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> EASE:
        """Fit on the interactions before the window; they are also the users' histories.
        Raises :class:`EaseTooLarge` first if the dense inverse would not fit."""
        check_ease_fits(len(item_index(item_ids)), self.memory_budget)
        self._history(interactions, item_ids)
        self.weights_ = ease_weights(gram(self.matrix_), self.l2)  # (N, N) B
        return self

    def _history_scores(self, x: sp.csr_matrix) -> np.ndarray:
        return np.asarray(x @ self.weights_, dtype=np.float32)


def ease_lambda_search(
    train_interactions: pd.DataFrame,
    val_split: EvalSplit,
    item_ids: np.ndarray,
    grid: Sequence[float] = EASE_GRID,
    k: int = 20,
    factor: float = 4.0,
    bounds: tuple[float, float] = (0.1, 1e7),
    max_extensions: int = 8,
    memory_budget: int | None = None,
) -> dict[float, float]:
    """Validation recall@k of EASE for every λ tried, in the order tried.

    The grid is tried first; while the best λ (ties: the first tried) is the smallest or the
    largest tried, the next one beyond it (÷ or x ``factor``) is tried too, until the best is
    interior, the next would leave ``bounds``, or ``max_extensions`` were added. Fit on
    ``train_interactions`` (everything before the validation window). Users without history
    score popularity for every λ, so they do not move the choice.
    """
    if not grid:
        raise ValueError("grid is empty: give at least one λ")
    if factor <= 1:
        raise ValueError(f"factor must be above 1 to widen the grid, got {factor}")
    _check_val(val_split)
    check_ease_fits(len(item_index(item_ids)), memory_budget)
    model = EASE(float(grid[0]))
    model._history(train_interactions, item_ids)
    g = gram(model.matrix_)  # (N, N) shared by every λ
    tried: dict[float, float] = {}

    def attempt(l2: float) -> None:
        model.l2, model.weights_ = l2, ease_weights(g, l2)
        tried[l2] = val_recall(model.score_fn(val_split), val_split, k)
        log.info("EASE λ=%g: validation recall@%d = %.4f", l2, k, tried[l2])

    for l2 in grid:
        attempt(float(l2))
    for _ in range(max_extensions):
        best = best_of(tried)
        lower, upper = min(tried) / factor, max(tried) * factor
        if best == min(tried) and lower >= bounds[0]:
            attempt(lower)
        elif best == max(tried) and upper <= bounds[1]:
            attempt(upper)
        else:
            break
    edge = best_of(tried) in (min(tried), max(tried)) and len(tried) > 1
    if edge:
        log.warning("EASE: the best λ %g is still at an edge of %s", best_of(tried), sorted(tried))
    return tried


def tune_ease_lambda(
    train_interactions: pd.DataFrame,
    val_split: EvalSplit,
    item_ids: np.ndarray,
    grid: Sequence[float] = EASE_GRID,
    k: int = 20,
) -> float:
    """The λ with the best recall@k over all users of the *validation* split, from ``grid``
    widened at its edges (:func:`ease_lambda_search`). Ties go to the first λ tried."""
    return float(best_of(ease_lambda_search(train_interactions, val_split, item_ids, grid, k)))
