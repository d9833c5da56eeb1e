"""Segment popularity: the popularity ranking within a user's profile segment (age bucket,
gender, occupation, zip region), the profile-only baseline for cold users.

Each segment ranks items by the interactions of its own users before the cut, ties broken by
all-time popularity; a segment with fewer than ``min_users`` users with history, and a user
without a profile (or a missing field), get the global popularity ranking. Which profile
fields define the segments is chosen on validation from :data:`SEGMENTATIONS`, by the cold
users' recall (the users this baseline is for), or all users' when validation has no cold
user. Warm users get the same ranking minus the items they have seen (``towers.evaluate``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from recsys.features.catalog import CATALOG
from towers.baselines import Popularity, _check_split, _latest, best_of
from towers.evaluate import EvalSplit, ScoreFn, item_index, rank_metrics

log = logging.getLogger(__name__)

# Candidate segmentations, chosen on validation: name -> profile fields.
SEGMENTATIONS: Mapping[str, tuple[str, ...]] = {
    "age bucket x gender": ("age_bucket", "gender"),
    "occupation": ("occupation",),
    "age bucket": ("age_bucket",),
    "zip region": ("zip_region",),
}
MIN_SEGMENT_USERS = 20  # smaller segments get the global ranking: too few users to count on


def _op(name: str) -> Any:
    """The declared op of user feature ``name``; None for a raw profile column."""
    try:
        return CATALOG.feature(name).op
    except KeyError:
        return None


def profile_feature(users: pd.DataFrame, name: str) -> pd.Series:
    """A static user feature (``recsys.features.catalog``) of each profile row, computed
    from the raw columns by its declared op, as the feature tables and the cold-start row
    compute it (missing stays None); a name the catalogue does not declare is a raw column."""
    op = _op(name)
    if op is None:
        return users[name].astype(object)
    raw = users.astype(object).where(users.notna(), None)
    values = [op.py(row) for row in raw.to_dict("records")]
    return pd.Series(values, index=users.index, dtype=object)


def segment_labels(users: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """user_id -> segment label (fields joined by " | "); None where a field is missing."""
    need = {"user_id"} | {f if (op := _op(f)) is None else op.column for f in by}
    missing = need - set(users.columns)
    if missing:
        raise ValueError(f"users profile lacks column(s) {sorted(missing)} needed by {list(by)}")
    if users["user_id"].duplicated().any():
        raise ValueError("users profile has duplicate user_id rows: one profile per user")
    fields = [profile_feature(users, f) for f in by]
    frame = pd.concat([f.astype(object).rename(i) for i, f in enumerate(fields)], axis=1)
    labels = frame.astype(str).agg(" | ".join, axis=1).where(frame.notna().all(axis=1), None)
    return pd.Series(labels.to_numpy(), index=users["user_id"].to_numpy(np.int64))


class SegmentPopularity:
    """Popularity within the user's profile segment; global popularity where that is thin."""

    def __init__(self, by: Sequence[str], min_users: int = MIN_SEGMENT_USERS) -> None:
        self.by = tuple(by)  # user_profile features defining a segment (from the raw profile)
        self.min_users = min_users

    def fit(
        self, interactions: pd.DataFrame, users: pd.DataFrame, item_ids: np.ndarray
    ) -> SegmentPopularity:
        """Count interactions per item and segment; ``users`` is the profile table."""
        index = item_index(item_ids)
        self.item_ids_ = index.to_numpy(np.int64)
        self.labels_ = segment_labels(users, self.by)
        counts = Popularity().fit(interactions, self.item_ids_).counts_  # (N,)
        # Ties within a segment go to the globally more popular item: a bonus below 1 count.
        self.global_ = counts / (counts.max() + 1 if len(counts) else 1)  # (N,) in [0, 1)
        cols = index.get_indexer(interactions["item_id"].to_numpy(np.int64))
        seg = self.labels_.reindex(interactions["user_id"].to_numpy(np.int64)).to_numpy()
        known = (cols >= 0) & pd.notna(seg)
        frame = pd.DataFrame({"segment": seg[known], "col": cols[known],
                              "user": interactions["user_id"].to_numpy(np.int64)[known]})  # fmt: skip
        sizes = frame.groupby("segment")["user"].nunique()
        self.segments_: dict[str, np.ndarray] = {}
        for name, rows in frame[frame.segment.isin(sizes[sizes >= self.min_users].index)].groupby(
            "segment"
        ):
            self.segments_[str(name)] = np.bincount(rows.col, minlength=len(index)).astype(
                np.float32
            ) + self.global_.astype(np.float32)
        log.info("segment popularity by %s: %d of %d segment(s) large enough",
                 self.by, len(self.segments_), len(sizes))  # fmt: skip
        self.latest_ = _latest(pd.to_datetime(interactions["event_timestamp"], utc=True))
        return self

    def _rows(self, user_ids: np.ndarray) -> np.ndarray:
        labels = self.labels_.reindex(user_ids).to_numpy()
        out = np.empty((len(user_ids), len(self.item_ids_)), np.float32)
        out[:] = self.global_
        for r, label in enumerate(labels):
            if label in self.segments_:
                out[r] = self.segments_[label]
        return out

    def score_fn(self, split: EvalSplit) -> ScoreFn:
        _check_split(split, self.item_ids_, self.latest_)
        return lambda rows: self._rows(split.user_ids[rows])


def segmentation_search(
    train_interactions: pd.DataFrame,
    users: pd.DataFrame,
    val_split: EvalSplit,
    item_ids: np.ndarray,
    candidates: Mapping[str, Sequence[str]] = SEGMENTATIONS,
    k: int = 20,
) -> dict[str, dict[str, float]]:
    """Validation recall@k (``cold`` and ``all`` users) of each candidate segmentation whose
    fields the profile has; the choice is :func:`best_segmentation` of the result."""
    if not len(val_split.user_ids):
        raise ValueError("the validation split has no users: nothing to choose on")
    tried: dict[str, dict[str, float]] = {}
    for name, by in candidates.items():
        try:
            model = SegmentPopularity(by).fit(train_interactions, users, item_ids)
        except ValueError as exc:
            log.warning("segmentation %r skipped: %s", name, exc)
            continue
        metrics = rank_metrics(model.score_fn(val_split), val_split, ks=(k,))
        tried[name] = {s: metrics[s][f"recall@{k}"] for s in ("cold", "all")}
        log.info("segment popularity by %s: validation recall@%d %s", name, k, tried[name])
    if not tried:
        raise ValueError(
            f"no segmentation fits the users profile (columns {sorted(users.columns)}); "
            f"candidates need {dict(candidates)}"
        )
    return tried


def best_segmentation(tried: dict[str, dict[str, float]]) -> str:
    """Best by cold users' recall, or all users' when validation has no cold user."""
    segment = "cold" if not any(math.isnan(r["cold"]) for r in tried.values()) else "all"
    name: str = best_of({n: r[segment] for n, r in tried.items()})
    return name
