"""ItemKNN: item-based nearest neighbours on the sparse user x item matrix, a baseline that
scales to catalogues where EASE's dense inverse does not fit.

Similarity (Sarwar et al., WWW 2001; shrunk cosine as in Koren, KDD 2008):
``s(i, j) = c_ij / (‖x_i‖ ‖x_j‖ + shrink)``, with ``c = XᵀX`` the co-occurrence counts of the
binary users x items matrix X. For each target item j only its ``k`` most similar items are
kept, so the weights W (N, N) are sparse with at most k entries per column, and a user's
scores are ``x_u W``: the summed similarity of j to the items the user had. ``k`` and
``shrink`` are chosen on validation (:func:`itemknn_search`).

Nothing is ever N x N dense: XᵀX is computed a block of target columns at a time, each block
dense only up to ``block_bytes``. Users without history get the all-time popularity ranking
(:class:`towers.baselines.HistoryScorer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from towers.baselines import HistoryScorer, best_of, val_recall
from towers.evaluate import EvalSplit, item_index

log = logging.getLogger(__name__)

# Grids chosen from on validation. Each shrink costs a pass over XᵀX (each k only a scoring),
# and unshrunk cosine (0) came last on MovieLens-100K and on random 10K-item data.
KNN_NEIGHBOURS = (50, 100, 200)
KNN_SHRINKS = (10.0, 50.0, 200.0)
BLOCK_BYTES = 256 * 2**20  # peak bytes of one dense (N, block) slice of XᵀX and its top-k
# Bytes per cell of a slice: float32 similarities, their negation and argpartition's int64.
BYTES_PER_CELL = 4 + 4 + 8


def top_neighbours(
    x: sp.csr_matrix, k: int, shrink: float, block_bytes: int = BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """(N, k') neighbour indices and similarities (best first, k' = min(k, N - 1)) of every
    item; an item never neighbours itself, and zero similarities are kept as zeros."""
    if k < 1:
        raise ValueError(f"k must be a positive number of neighbours, got {k}")
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    n = x.shape[1]
    k = min(k, max(n - 1, 0))
    xc = sp.csc_matrix(x, dtype=np.float32)
    xt = sp.csr_matrix(xc.T)  # (N, users): CSR times CSC slice is the fast sparse product
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())  # (N,)
    idx = np.zeros((n, k), np.int64)
    sim = np.zeros((n, k), np.float32)
    if k == 0:
        return idx, sim
    step = max(1, block_bytes // (BYTES_PER_CELL * max(n, 1)))
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        c = np.asarray((xt @ xc[:, lo:hi]).toarray(), np.float32)  # (N, b) co-occurrence
        c /= norms[:, None] * norms[None, lo:hi] + shrink + 1e-12
        c[np.arange(lo, hi), np.arange(hi - lo)] = -np.inf  # not its own neighbour
        top = np.argpartition(-c, k - 1, axis=0)[:k]  # (k, b) unordered
        vals = np.take_along_axis(c, top, axis=0)
        order = np.argsort(-vals, axis=0, kind="stable")
        idx[lo:hi] = np.take_along_axis(top, order, axis=0).T
        sim[lo:hi] = np.take_along_axis(vals, order, axis=0).T
    return idx, sim


def neighbour_weights(idx: np.ndarray, sim: np.ndarray, k: int) -> sp.csr_matrix:
    """W (N, N) sparse: W[i, j] = s(i, j) for the first ``k`` neighbours i of each item j."""
    n = len(idx)
    k = min(k, idx.shape[1])
    rows, cols, vals = idx[:, :k].ravel(), np.repeat(np.arange(n), k), sim[:, :k].ravel()
    keep = vals > 0
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32)


class ItemKNN(HistoryScorer):
    """Item-based kNN with shrunk cosine similarity, sparse throughout."""

    def __init__(self, k: int = 100, shrink: float = 10.0) -> None:
        self.k = k  # neighbours kept per item
        self.shrink = shrink  # damps similarities resting on few co-occurrences

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> ItemKNN:
        """Fit on the interactions before the window; they are also the users' histories."""
        self._history(interactions, item_ids)
        idx, sim = top_neighbours(self.matrix_, self.k, self.shrink)
        self.weights_ = neighbour_weights(idx, sim, self.k)
        return self

    def _history_scores(self, x: sp.csr_matrix) -> np.ndarray:
        return np.asarray((x @ self.weights_).toarray(), dtype=np.float32)


def itemknn_search(
    train_interactions: pd.DataFrame,
    val_split: EvalSplit,
    item_ids: np.ndarray,
    neighbours: Sequence[int] = KNN_NEIGHBOURS,
    shrinks: Sequence[float] = KNN_SHRINKS,
    k: int = 20,
) -> dict[tuple[int, float], float]:
    """Validation recall@k of ItemKNN for every (neighbours, shrink), in the order tried.
    One neighbour list per shrink (the longest), cut to each shorter k."""
    if not neighbours or not shrinks:
        raise ValueError("neighbours and shrinks must each hold at least one value")
    if not len(val_split.user_ids):
        raise ValueError("the validation split has no users: nothing to choose on")
    model = ItemKNN(max(neighbours), float(shrinks[0]))
    model._history(train_interactions, np.asarray(item_index(item_ids)))
    tried: dict[tuple[int, float], float] = {}
    for shrink in shrinks:
        idx, sim = top_neighbours(model.matrix_, max(neighbours), float(shrink))
        for n in neighbours:
            model.k, model.shrink = int(n), float(shrink)
            model.weights_ = neighbour_weights(idx, sim, int(n))
            key = (int(n), float(shrink))
            tried[key] = val_recall(model.score_fn(val_split), val_split, k)
            log.info("ItemKNN k=%d shrink=%g: validation recall@%d = %.4f", *key, k, tried[key])
    return tried


def tune_itemknn(
    train_interactions: pd.DataFrame, val_split: EvalSplit, item_ids: np.ndarray, k: int = 20
) -> tuple[int, float]:
    """The (neighbours, shrink) with the best validation recall@k; ties to the first tried."""
    best: tuple[int, float] = best_of(itemknn_search(train_interactions, val_split, item_ids, k=k))
    return best
