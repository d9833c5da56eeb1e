"""ItemKNN: item-based nearest neighbours on the sparse user x item matrix, a baseline that
scales to catalogues where EASE's dense inverse does not fit.

Similarity (Sarwar et al., WWW 2001; shrunk cosine as in Koren, KDD 2008):
``s(i, j) = c_ij / (‖x_i‖ ‖x_j‖ + shrink)``, with ``c = XᵀX`` the co-occurrence counts of the
binary users x items matrix X. For each target item j only its ``k`` most similar items are
kept, so the weights W (N, N) are sparse with at most k entries per column, and a user's
scores are ``x_u W``: the summed similarity of j to the items the user had. ``k`` and
``shrink`` are chosen on validation (:func:`itemknn_search`).

Nothing is ever N x N dense, and the cost follows the co-occurrences, not N²: XᵀX is a
sparse product computed a block of target items at a time (each block's nonzeros bounded by
``block_bytes``), the shrunk cosine is taken on its nonzeros only, and each item keeps the
``k`` best of them; an item co-occurring with fewer than ``k`` others keeps fewer (a zero
similarity is never a neighbour). Users without history get the all-time popularity
ranking (:class:`towers.baselines.HistoryScorer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from towers.baselines import HistoryScorer, best_of, val_recall
from towers.evaluate import EvalSplit, item_index

log = logging.getLogger(__name__)

# Grids chosen from on validation. Each block of XᵀX is computed once for every shrink (each
# k only a scoring), and unshrunk cosine (0) came last on MovieLens-100K and on random
# 10K-item data.
KNN_NEIGHBOURS = (50, 100, 200)
KNN_SHRINKS = (10.0, 50.0, 200.0)
BLOCK_BYTES = 256 * 2**20  # peak bytes of one block of XᵀX's nonzeros and their ranking
# Bytes per nonzero of a block: the product's value and column and its filtered copies, the
# target rows, similarities, sort key and order (tracemalloc: 74 a nonzero on MovieLens-100K).
BYTES_PER_NONZERO = 80


class Neighbours(NamedTuple):
    """Every item's neighbours, best first (ties: lower item index first): those of item j
    are ``items[indptr[j]:indptr[j + 1]]``, at most k, each with a positive similarity."""

    indptr: np.ndarray  # (N + 1,) int64
    items: np.ndarray  # (nnz,) int32 neighbour item indices
    sims: np.ndarray  # (nnz,) float32 similarities, descending within an item


def _blocks(x: sp.csr_matrix, xt: sp.csr_matrix, block_bytes: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of target items whose co-occurrence rows hold at most about
    ``block_bytes`` (at least one item a block). An item's nonzeros are bounded by the summed
    history lengths of its users, and by N."""
    n = x.shape[1]
    lengths = np.diff(x.indptr).astype(np.float64)  # (users,) history lengths
    bound = np.minimum(xt @ lengths, n)  # (N,) nonzeros of each item's row of XᵀX, at most
    cum = np.cumsum(bound)
    cells = max(1, block_bytes // BYTES_PER_NONZERO)
    out, lo = [], 0
    while lo < n:
        done = cum[lo - 1] if lo else 0.0
        hi = max(lo + 1, int(np.searchsorted(cum, done + cells, side="right")))
        out.append((lo, min(hi, n)))
        lo = hi
    return out


def _best_first(
    rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, b: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best (col, sim) of each of ``b`` rows (ids 0..b-1), best first and ties to the
    lower column (``cols`` ascending within a row): kept counts (b,), cols, sims."""
    # One sort: rows ascending, then similarity descending (a positive float32's bits are
    # ordered as its value); stable, so equal similarities keep the ascending columns.
    key = (rows.astype(np.uint64) << np.uint64(32)) | (
        np.uint32(0xFFFFFFFF) - sims.view(np.uint32)
    ).astype(np.uint64)
    order = np.argsort(key, kind="stable")
    counts = np.bincount(rows, minlength=b)  # (b,)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - starts[rows[order]]
    keep = order[rank < k]
    return np.minimum(counts, k), cols[keep], sims[keep]


def top_neighbours(
    x: sp.csr_matrix, k: int, shrinks: Sequence[float], block_bytes: int = BLOCK_BYTES
) -> list[Neighbours]:
    """Each item's (at most) ``k`` most similar items, one :class:`Neighbours` per shrink (in
    the order given), from one pass over XᵀX; an item never neighbours itself."""
    if k < 1:
        raise ValueError(f"k must be a positive number of neighbours, got {k}")
    if not shrinks or min(shrinks) < 0:
        raise ValueError(f"shrinks must be one or more values >= 0, got {list(shrinks)}")
    x = sp.csr_matrix(x, dtype=np.float32)
    xt = sp.csr_matrix(x.T)  # (N, users): a block of target rows is a cheap row slice
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (N,) float32
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in shrinks]
    for lo, hi in _blocks(x, xt, block_bytes):
        c = xt[lo:hi] @ x  # (b, N) sparse co-occurrence of the block's target items
        c.sort_indices()
        rows = np.repeat(np.arange(hi - lo), np.diff(c.indptr))  # (nnz,) target, from 0
        other = rows + lo != c.indices  # not its own neighbour
        rows, cols, co = rows[other], c.indices[other].astype(np.int32), c.data[other]
        denom = norms[cols] * norms[rows + lo]  # (nnz,) float32 ‖x_i‖ ‖x_j‖
        for out, shrink in zip(parts, shrinks, strict=True):
            out.append(_best_first(rows, cols, co / (denom + shrink + 1e-12), hi - lo, k))
    result = []
    for out in parts:
        counts = np.concatenate([np.zeros(1, np.int64)] + [p[0] for p in out])
        result.append(Neighbours(np.cumsum(counts), np.concatenate([p[1] for p in out]),
                                 np.concatenate([p[2] for p in out])))  # fmt: skip
    return result


def neighbour_weights(nb: Neighbours, k: int) -> sp.csr_matrix:
    """W (N, N) sparse: W[i, j] = s(i, j) for the first ``k`` neighbours i of each item j."""
    n = len(nb.indptr) - 1
    lengths = np.diff(nb.indptr)  # (N,)
    rank = np.arange(len(nb.items)) - np.repeat(nb.indptr[:-1], lengths)
    keep = rank < k
    cols = np.repeat(np.arange(n), lengths)[keep]
    return sp.csr_matrix((nb.sims[keep], (nb.items[keep], cols)), shape=(n, n), dtype=np.float32)


class ItemKNN(HistoryScorer):
    """Item-based kNN with shrunk cosine similarity, sparse throughout."""

    def __init__(self, k: int = 100, shrink: float = 10.0) -> None:
        self.k = k  # neighbours kept per item
        self.shrink = shrink  # damps similarities resting on few co-occurrences

    def fit(self, interactions: pd.DataFrame, item_ids: np.ndarray) -> ItemKNN:
        """Fit on the interactions before the window; they are also the users' histories."""
        self._history(interactions, item_ids)
        (nb,) = top_neighbours(self.matrix_, self.k, (self.shrink,))
        self.weights_ = neighbour_weights(nb, self.k)
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
    One neighbour list per shrink (the longest), cut to each shorter k; XᵀX is computed
    once for every shrink."""
    if not neighbours or not shrinks:
        raise ValueError("neighbours and shrinks must each hold at least one value")
    if not len(val_split.user_ids):
        raise ValueError("the validation split has no users: nothing to choose on")
    model = ItemKNN(max(neighbours), float(shrinks[0]))
    model._history(train_interactions, np.asarray(item_index(item_ids)))
    tried: dict[tuple[int, float], float] = {}
    lists = top_neighbours(model.matrix_, max(neighbours), [float(s) for s in shrinks])
    for shrink, nb in zip(shrinks, lists, strict=True):
        for n in neighbours:
            model.k, model.shrink = int(n), float(shrink)
            model.weights_ = neighbour_weights(nb, int(n))
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
