"""EASE: Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019, with its λ
chosen on validation and its memory bounded.

An item-item linear model with a closed form: with X the binary users x items matrix,
``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` column-wise, ``diag(B) = 0``; a user's scores are
``x_u B`` (users with no history: all-time popularity, :class:`towers.baselines.HistoryScorer`).

- λ: :func:`ease_lambda_search` tries a grid on the validation window and widens it while the
  best λ sits at an edge.
- Memory: the dense inverse needs :func:`ease_bytes`; over the budget (default: a share of
  the memory available), fitting raises :class:`EaseTooLarge` before allocating anything.
  ``top_items`` fits a *sampled* EASE instead: the model covers the most popular items that
  fit (:func:`ease_max_items`), every other item ranks below them by popularity; so it does,
  for time, above ``EASE_MAX_ITEMS`` items.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import lapack

from towers.baselines import HistoryScorer, _check_val, best_of, val_recall
from towers.evaluate import EvalSplit, item_index

log = logging.getLogger(__name__)

EASE_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
# Peak bytes per N² of the λ search: the float64 Gram, its float64 working copy, and the
# float32 weights of the previous and the current λ.
EASE_BYTES_PER_CELL = 8 + 8 + 4 + 4
# Share of the memory available at fit time the dense EASE may take by default.
EASE_MEMORY_SHARE = 0.5
# A sampled EASE covering fewer items than this is too partial to stand for EASE.
MIN_SAMPLED_ITEMS = 1000
# The most items EASE models (the most popular; a sampled EASE above): each λ tried (six to
# a dozen) costs a dense Cholesky inverse, N³ flops: on one thread 1.6 s at 4,000 items,
# 22.1 s at 10,000 (benchmarks/bench_ease.py).
EASE_MAX_ITEMS = 4000


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


def ease_max_items(budget: int | None = None) -> int:
    """The most items a dense EASE can model within ``budget`` bytes."""
    budget = default_memory_budget() if budget is None else int(budget)
    return math.isqrt(max(budget, 0) // EASE_BYTES_PER_CELL)


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


class EASE(HistoryScorer):
    """Steck's EASE (WWW 2019): closed-form item-item weights with an L2 penalty λ."""

    def __init__(
        self, l2: float = 500.0, memory_budget: int | None = None, top_items: int | None = None
    ) -> None:
        self.l2 = l2  # λ; choose it on validation with ease_lambda_search
        self.memory_budget = memory_budget  # bytes; None: a share of the available memory
        self.top_items = top_items  # model only the most popular items (sampled); None: all

    def _prepare(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> sp.csr_matrix:
        """Check the memory, read the histories; the (n, M) history of the modelled items."""
        n = len(item_index(item_ids))
        check_ease_fits(n if self.top_items is None else min(n, self.top_items),
                        self.memory_budget)  # fmt: skip
        self._history(interactions, item_ids)
        self.columns_: np.ndarray | None = None
        if self.top_items is None or self.top_items >= n:
            return self.matrix_
        top = np.argsort(-self.fallback_, kind="stable")[: self.top_items]
        self.columns_ = np.sort(top)  # (M,) the most popular items, ties by position
        # Unmodelled items score below every modelled one, in popularity order: in [0, 1).
        self.rest_ = self.fallback_ / (self.fallback_.max() + 1)
        log.info("sampled EASE: the %d most popular of %d items", len(top), n)
        return self.matrix_[:, self.columns_]

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> EASE:
        """Fit on the interactions before the window; they are also the users' histories.
        Raises :class:`EaseTooLarge` first if the dense inverse would not fit."""
        self.weights_ = ease_weights(gram(self._prepare(interactions, item_ids)), self.l2)
        return self

    def _history_scores(self, x: sp.csr_matrix) -> np.ndarray:
        if self.columns_ is None:
            return np.asarray(x @ self.weights_, dtype=np.float32)
        s = np.asarray(x[:, self.columns_] @ self.weights_, dtype=np.float32)  # (B, M)
        out = (s.min(axis=1, keepdims=True) - 1) + self.rest_  # (B, N) below every s
        out[:, self.columns_] = s
        return out.astype(np.float32, copy=False)


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
    top_items: int | None = None,
) -> dict[float, float]:
    """Validation recall@k of EASE for every λ tried, in the order tried.

    The grid is tried first; while the best λ (ties: the first tried) is the smallest or the
    largest tried, the next one beyond it (÷ or x ``factor``) is tried too, until the best is
    interior, the next would leave ``bounds``, or ``max_extensions`` were added. Fit on
    ``train_interactions`` (everything before the validation window). Users without history
    score popularity for every λ, so they do not move the choice. ``memory_budget`` and
    ``top_items`` are :class:`EASE`'s.
    """
    if not grid:
        raise ValueError("grid is empty: give at least one λ")
    if factor <= 1:
        raise ValueError(f"factor must be above 1 to widen the grid, got {factor}")
    _check_val(val_split)
    model = EASE(float(grid[0]), memory_budget, top_items)
    g = gram(model._prepare(train_interactions, item_ids))  # (M, M) shared by every λ
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
