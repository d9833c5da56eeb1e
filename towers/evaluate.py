"""Honest temporal evaluation: the one path every model and baseline is scored through.

A model sees everything before a window's ``start`` and is asked to rank the catalogue for
each user who acted in ``[start, end)``. Protocol (the model's author must match it):

- **truth** = the user's window items that they had *not* interacted with before ``start``.
  Items seen before are removed from the ranking (score ``-inf``), so they could never be
  hit; a user whose window items were all seen before has nothing to find and is dropped.
- **recall@K** = hits in the top K / ``min(K, |truth|)``, the normalisation of Steck (EASE,
  WWW 2019): a user with more than K truth items can still reach 1.
- **NDCG@K**: binary relevance, DCG = sum of ``1 / log2(rank + 1)`` over hits (rank from 1),
  divided by the ideal DCG of ``min(K, |truth|)`` hits.
- **Ties** are broken by one fixed random order of the catalogue (``seed``), never by item
  index: a model that gives everyone the same score (EASE on a cold user) scores as a random
  ranking, not as whatever the item-id order happens to encode.
- **Segments**: ``warm`` users have any interaction before ``start`` (any item, even one
  outside the catalogue), ``cold`` users have none.

The files reporting the scores are written by ``towers.report``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], np.ndarray]  # user row positions (B,) -> scores (B, N)
SEGMENTS = ("all", "warm", "cold")
# Most score cells (users x items) ranked at once: a block's scores, their reordered copy and
# the top-k's int64 positions are about 20 bytes a cell (80 MB here), so at 100K items a block
# holds 41 users, not the 1,024 of a small catalogue (2 GB).
BLOCK_CELLS = 2**22
# _top_k bounds each row's k-th largest score from one column in this many (at least k).
SAMPLE_SHARE = 16


@dataclass(frozen=True)
class EvalSplit:
    """The users evaluated on one time window and what they did in it."""

    item_ids: np.ndarray  # (N,) int64: the catalogue; position = item index
    user_ids: np.ndarray  # (U,) int64, ascending: users with at least one new item in the window
    truth: list[np.ndarray]  # U sorted arrays of item indices first interacted with in the window
    seen: sp.csr_matrix  # (U, N) 1 where the user interacted before the window: not ranked
    warm: np.ndarray  # (U,) bool: the user has any interaction before the window
    start: pd.Timestamp | None = None  # the window [start, end), UTC; lets models check for leaks
    end: pd.Timestamp | None = None


def to_utc(when: Any) -> pd.Timestamp:
    """A UTC timestamp; naive input is taken as UTC (the project's convention)."""
    stamp = pd.Timestamp(when)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def item_index(item_ids: np.ndarray) -> pd.Index:
    """The catalogue as an index (item id -> position); ids must be unique."""
    index = pd.Index(np.asarray(item_ids, dtype=np.int64))
    if not index.is_unique:
        raise ValueError("item_ids has duplicates: the catalogue needs one position per item id")
    return index


def build_eval_split(
    interactions: pd.DataFrame, item_ids: np.ndarray, start: Any, end: Any | None
) -> EvalSplit:
    """The users who interacted with catalogue items in ``[start, end)`` and their history.

    ``interactions`` needs ``user_id``, ``item_id``, ``event_timestamp``; it may hold the whole
    timeline (history before ``start`` gives ``seen`` and ``warm``; events at or after ``end``
    are ignored). ``end=None`` means no upper bound.
    """
    missing = {"user_id", "item_id", "event_timestamp"} - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions lacks column(s) {sorted(missing)}")
    start = to_utc(start)
    end = None if end is None else to_utc(end)
    if end is not None and not start < end:
        raise ValueError(f"empty window: start={start} must be before end={end}")
    index = item_index(item_ids)
    n_items = len(index)
    when = pd.to_datetime(interactions["event_timestamp"], utc=True)
    users = interactions["user_id"].to_numpy(np.int64)
    cols = index.get_indexer(interactions["item_id"].to_numpy(np.int64))  # -1: not in catalogue
    before = (when < start).to_numpy()
    inside = ~before if end is None else ~before & (when < end).to_numpy()
    unknown = int((inside & (cols < 0)).sum())
    if unknown:
        log.info("%d window event(s) with items outside the catalogue ignored", unknown)
    inside &= cols >= 0

    candidates = np.unique(users[inside])  # (C,) ascending
    in_window = np.searchsorted(candidates, users[inside]) * n_items + cols[inside]
    history = before & (cols >= 0) & np.isin(users, candidates)
    seen_keys = np.unique(np.searchsorted(candidates, users[history]) * n_items + cols[history])
    # Seen items are never ranked, so they can never be hit: they are not truth.
    truth_keys = np.setdiff1d(np.unique(in_window), seen_keys, assume_unique=True)
    kept = np.unique(truth_keys // n_items)  # candidate rows that still have truth
    if len(kept) < len(candidates):
        log.info(
            "%d user(s) dropped: every window item was seen before the window",
            len(candidates) - len(kept),
        )

    def rows_of(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(new row, item column) of the keys whose candidate row is kept."""
        rows, cols_ = keys // n_items, keys % n_items
        pos = np.searchsorted(kept, rows).clip(max=max(len(kept) - 1, 0))
        keep = (kept[pos] == rows) if len(kept) else np.zeros(len(keys), bool)
        return pos[keep], cols_[keep]

    truth_rows, truth_cols = rows_of(truth_keys)  # keys sorted, so rows and columns are too
    seen_rows, seen_cols = rows_of(seen_keys)
    user_ids = candidates[kept]
    seen = sp.csr_matrix(
        (np.ones(len(seen_rows), np.float32), (seen_rows, seen_cols)),
        shape=(len(user_ids), n_items),
    )
    return EvalSplit(
        item_ids=index.to_numpy(np.int64),
        user_ids=user_ids,
        truth=np.split(truth_cols, np.flatnonzero(np.diff(truth_rows)) + 1) if len(kept) else [],
        seen=seen,
        warm=np.isin(user_ids, users[before]),
        start=start,
        end=end,
    )


def user_block(block_size: int, n_items: int) -> int:
    """Users scored at once: ``block_size``, fewer when that many rows of ``n_items`` scores
    would exceed :data:`BLOCK_CELLS` (at least one)."""
    return max(1, min(block_size, BLOCK_CELLS // max(n_items, 1)))


def _top_k(s: np.ndarray, k: int, order: np.ndarray) -> np.ndarray:
    """(B, k) column indices of the k largest scores, best first; ties go to the column that
    comes first in ``order`` (N,), a random permutation of the columns.

    Not an argpartition of every row (most of a large catalogue's ranking cost): the k-th
    largest of the columns ``order[:N / SAMPLE_SHARE]``, ``low``, bounds each row's k-th
    largest from below. Only the scores above it (fewer than about k x SAMPLE_SHARE a row)
    are gathered and ranked exactly; a row with fewer than k of them has ``low`` as its k-th
    largest, which may be tied across most of the row (a zero score, a seen item's -inf)."""
    b, n = s.shape
    m = min(n, max(k, n // SAMPLE_SHARE))
    prio = np.empty(n, np.int64)
    prio[order] = np.arange(n)  # (N,) tie-break rank of each column
    low = np.partition(s[:, order[:m]], m - k, axis=1)[:, m - k]  # (B,) <= the k-th largest
    r, c = np.nonzero(s > low[:, None])  # (C,) candidates, row-major
    v = s[r, c]
    counts = np.bincount(r, minlength=b)  # (B,)
    kth = low.copy()
    big = counts >= k  # rows whose k-th largest is above low
    if big.any():
        pick = big[r]
        slot = (np.cumsum(big) - 1)[r[pick]]  # row of each candidate among the big rows
        pos = np.arange(len(r))[pick] - (np.cumsum(counts) - counts)[r[pick]]
        pad = np.full((int(big.sum()), int(counts[big].max())), -np.inf, s.dtype)
        pad[slot, pos] = v[pick]
        kth[big] = np.partition(pad, pad.shape[1] - k, axis=1)[:, pad.shape[1] - k]
    above = v > kth[r]
    # Ties at the k-th score go to the columns first in order, as many as each row needs.
    need = k - np.bincount(r[above], minlength=b)  # (B,)
    tied = np.flatnonzero(v == kth[r])
    tied = tied[np.lexsort((prio[c[tied]], r[tied]))]  # by row, then tie-break rank
    tied_rows = np.bincount(r[tied], minlength=b)
    rank = np.arange(len(tied)) - (np.cumsum(tied_rows) - tied_rows)[r[tied]]
    keep = np.concatenate([np.flatnonzero(above), tied[rank < need[r[tied]]]])
    rows, cols, vals = [r[keep]], [c[keep]], [v[keep]]
    for i in np.flatnonzero(~big):  # k-th largest = low: the first columns scoring low
        at = np.flatnonzero(s[i] == low[i])
        if len(at) > need[i]:
            at = at[np.argpartition(prio[at], need[i] - 1)[: need[i]]]
        rows.append(np.full(len(at), i))
        cols.append(at)
        vals.append(s[i, at])
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)  # k a row
    return c[np.lexsort((prio[c], -v, r))].reshape(b, k)


def _block_scores(scores: np.ndarray | ScoreFn, rows: np.ndarray, n_items: int) -> np.ndarray:
    """A fresh float copy of the scores of ``rows``: (B, N)."""
    block = np.asarray(scores(rows) if callable(scores) else scores[rows[0] : rows[-1] + 1])
    if block.shape != (len(rows), n_items):
        raise ValueError(
            f"scores for {len(rows)} users must be ({len(rows)}, {n_items}), got {block.shape}"
        )
    dtype = np.float32 if block.dtype == np.float32 else np.float64
    s = np.array(block, dtype=dtype)  # a copy: seen items are overwritten below
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; a model must give every item a number")
    return s


def per_user_metrics(
    scores: np.ndarray | ScoreFn,
    split: EvalSplit,
    ks: Sequence[int] = (10, 20, 50),
    block_size: int = 1024,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``{"recall@K": (U,), "ndcg@K": (U,)}`` for every K; see the module docstring."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    n_users, n_items = len(split.user_ids), len(split.item_ids)
    if not callable(scores) and np.shape(scores) != (n_users, n_items):
        raise ValueError(
            f"scores must be (users, items) = {(n_users, n_items)}, got {np.shape(scores)}"
        )
    k_max = min(ks[-1], n_items)
    n_truth = np.array([len(t) for t in split.truth], dtype=np.int64)  # (U,)
    if (n_truth == 0).any():
        raise ValueError(
            "every evaluated user needs a truth item (build_eval_split drops the rest)"
        )
    truth_keys = np.sort(  # (sum |truth|,) user row * N + item index
        np.concatenate(
            [np.empty(0, np.int64)] + [u * n_items + t for u, t in enumerate(split.truth)]
        )
    )
    # Ties are broken by one fixed random order of the columns: random, but reproducible.
    order = np.random.default_rng(seed).permutation(n_items)  # (N,)
    hits = np.zeros((n_users, k_max), dtype=bool)
    block_size = user_block(block_size, n_items)
    for lo in range(0, n_users, block_size):
        rows = np.arange(lo, min(lo + block_size, n_users))
        s = _block_scores(scores, rows, n_items)  # (B, N)
        seen = split.seen[lo : rows[-1] + 1]
        s[np.repeat(np.arange(len(rows)), np.diff(seen.indptr)), seen.indices] = -np.inf
        top = _top_k(s, k_max, order)  # (B, k_max) item indices, best first
        keys = rows[:, None] * n_items + top
        pos = np.searchsorted(truth_keys, keys).clip(max=len(truth_keys) - 1)
        hits[lo : lo + len(rows)] = truth_keys[pos] == keys
    gains = hits / np.log2(np.arange(2, k_max + 2))  # (U, k_max)
    ideal = np.concatenate([[0.0], np.cumsum(1 / np.log2(np.arange(2, ks[-1] + 2)))])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        best = np.minimum(k, n_truth)  # (U,)
        out[f"recall@{k}"] = hits[:, :k].sum(axis=1) / best
        out[f"ndcg@{k}"] = gains[:, :k].sum(axis=1) / ideal[best]
    return out


def rank_metrics(
    scores: np.ndarray | ScoreFn,
    split: EvalSplit,
    ks: Sequence[int] = (10, 20, 50),
    block_size: int = 1024,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean recall@K and NDCG@K over all, warm and cold users.

    ``scores`` is a (U, N) array aligned with ``split.user_ids`` and ``split.item_ids``
    (higher is better), or ``score_fn(rows) -> (B, N)`` where ``rows`` are positions in
    ``split.user_ids``; it is called on blocks of ``block_size`` users (fewer on large
    catalogues: :func:`user_block`), so U x N never has to be in memory. A segment without users gets NaN metrics and ``users = 0``.
    """
    return aggregate(per_user_metrics(scores, split, ks, block_size, seed), split)


def aggregate(per_user: dict[str, np.ndarray], split: EvalSplit) -> dict[str, dict[str, float]]:
    """:func:`per_user_metrics` of ``split`` as :func:`rank_metrics` reports them: means over
    all, warm and cold users (kept apart when the per-user rows are needed too)."""
    masks = {"all": np.ones(len(split.user_ids), bool), "warm": split.warm, "cold": ~split.warm}
    result: dict[str, dict[str, float]] = {}
    for segment in SEGMENTS:
        mask = np.asarray(masks[segment], dtype=bool)
        n = int(mask.sum())
        result[segment] = {
            name: float(values[mask].mean()) if n else math.nan for name, values in per_user.items()
        }
        result[segment]["users"] = n
    return result


def top_k_items(
    scores: np.ndarray | ScoreFn, split: EvalSplit, k: int, block_size: int = 1024, seed: int = 0
) -> np.ndarray:
    """(U, min(k, N)) item indices of each user's top ``k``, best first: ranked as
    :func:`per_user_metrics` ranks them (seen items removed, the same random tie-break)."""
    n_users, n_items = len(split.user_ids), len(split.item_ids)
    k = min(k, n_items)
    order = np.random.default_rng(seed).permutation(n_items)  # (N,) as per_user_metrics
    out = np.empty((n_users, k), np.int64)
    block_size = user_block(block_size, n_items)
    for lo in range(0, n_users, block_size):
        rows = np.arange(lo, min(lo + block_size, n_users))
        s = _block_scores(scores, rows, n_items)  # (B, N)
        seen = split.seen[lo : rows[-1] + 1]
        s[np.repeat(np.arange(len(rows)), np.diff(seen.indptr)), seen.indices] = -np.inf
        out[lo : lo + len(rows)] = _top_k(s, k, order)
    return out
