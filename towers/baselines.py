"""Baselines the two-tower model must beat, scored through the same ``towers.evaluate`` path.

- :class:`Popularity`: every user gets the catalogue ranked by interaction count (optionally
  only the last ``window_days`` before the cut).
- :class:`EASE`: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. An
  item-item linear model with a closed form: with X the binary users x items matrix,
  ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` column-wise, ``diag(B) = 0``; a user's scores
  are ``x_u B``. It cannot score a user with no history: cold users get all-zero scores (a
  random ranking under the evaluation's tie-break) and are reported as such, with no fallback.

Both are fitted on the interactions *before* the evaluation window (everything before its
``start``: for the test window that is train + validation), and that history is also what
EASE scores a user from. Scoring a split whose window starts at or before the latest fitted
event raises: that would be a leak.
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

# XᵀX + λI is inverted densely in float64: 30,000 items is 7.2 GB per N x N matrix.
MAX_EASE_ITEMS = 30_000


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


class EASE:
    """Steck's EASE (WWW 2019): closed-form item-item weights with an L2 penalty λ."""

    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2  # λ; choose it on validation with tune_ease_lambda

    def _history(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> EASE:
        index = item_index(item_ids)
        if len(index) > MAX_EASE_ITEMS:
            raise ValueError(
                f"EASE inverts a dense items x items matrix: {len(index):,} items is over the "
                f"{MAX_EASE_ITEMS:,} limit ({len(index) ** 2 * 8 / 1e9:.1f} GB per copy); "
                "restrict the catalogue (e.g. the most popular items)"
            )
        self.item_ids_ = index.to_numpy(np.int64)
        self.user_ids_, self.matrix_ = interaction_matrix(interactions, index)  # (n,), (n, N)
        self.latest_ = _latest(pd.to_datetime(interactions["event_timestamp"], utc=True))
        return self

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> EASE:
        """Fit on the interactions before the window; they are also the users' histories."""
        self._history(interactions, item_ids)
        self.weights_ = ease_weights(gram(self.matrix_), self.l2)  # (N, N) B
        return self

    def _rows(self, user_ids: np.ndarray) -> np.ndarray:
        """(B, N) scores x_u B; zeros for users without history."""
        out = np.zeros((len(user_ids), len(self.item_ids_)), np.float32)
        pos = np.searchsorted(self.user_ids_, user_ids).clip(max=max(len(self.user_ids_) - 1, 0))
        known = self.user_ids_[pos] == user_ids if len(self.user_ids_) else pos < 0
        if known.any():
            out[known] = self.matrix_[pos[known]] @ self.weights_
        return out

    def scores(self, split: EvalSplit) -> np.ndarray:
        """(U, N) float32 scores for the split's users (rows in ``split.user_ids`` order)."""
        _check_split(split, self.item_ids_, self.latest_)
        return self._rows(split.user_ids)

    def score_fn(self, split: EvalSplit) -> ScoreFn:
        """Scores by blocks of user rows, for splits where U x N does not fit in memory."""
        _check_split(split, self.item_ids_, self.latest_)
        return lambda rows: self._rows(split.user_ids[rows])


def tune_ease_lambda(
    train_interactions: pd.DataFrame,
    val_split: EvalSplit,
    item_ids: np.ndarray,
    grid: Sequence[float] = (50, 100, 200, 500, 1000, 2000),
    k: int = 20,
) -> float:
    """The λ in ``grid`` with the best recall@k over all users of the *validation* split.

    Fit on ``train_interactions`` (everything before the validation window). Cold users score
    the same for every λ, so they do not move the choice. Ties go to the first λ in ``grid``.
    """
    if not grid:
        raise ValueError("grid is empty: give at least one λ")
    if not len(val_split.user_ids):
        raise ValueError("the validation split has no users: nothing to choose λ on")
    model = EASE(l2=float(grid[0]))._history(train_interactions, item_ids)
    g = gram(model.matrix_)  # (N, N) shared by every λ
    best, best_recall = float(grid[0]), -np.inf
    for l2 in grid:
        model.l2, model.weights_ = float(l2), ease_weights(g, float(l2))
        recall = rank_metrics(model.score_fn(val_split), val_split, ks=(k,))["all"][f"recall@{k}"]
        log.info("EASE λ=%g: validation recall@%d = %.4f", l2, k, recall)
        if recall > best_recall:
            best, best_recall = float(l2), recall
    return best
