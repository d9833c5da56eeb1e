"""The user tower's input columns for one request: from a Feast online row, or built in
Python for a user the store does not know (cold start).

The user tower was trained on the columns of the Feast service ``user_tower_serving_v1``
(views ``user_profile`` and ``user_activity``, computed in DuckDB by ``recsys.features``).
A cold-start request carries the raw profile (age, gender, occupation, zip code) and,
optionally, the user's interactions so far (:class:`Interaction`: an item, optionally its
rating and time); :func:`cold_start_row` computes
the same columns from them with the same rules as the SQL, so the model sees a new user
exactly as it would see a stored one with that profile and history:

* ``age_bucket``: ``recsys.features.AGE_BUCKETS`` (the first bucket whose upper bound is
  above the age, else ``56+``; no age, no bucket);
* ``zip_prefix``: the first three characters (DuckDB's ``substr`` counts code points, as
  Python slicing does);
* ``user_interaction_count``: the number of interactions (items given, repeats included);
* ``user_genre_affinity``: per genre of the vocabulary, the share of those interactions
  whose item has that genre (an unknown item counts in the denominator and in no genre: the
  SQL's ``LEFT JOIN`` of the items table), as float32;
* ``user_mean_rating``: the mean of the ratings given with the interactions (those without
  a rating left out); missing when none has one (as the SQL's mean over events without
  ratings);
* ``recent_item_ids``: the first ``recent_items`` ids, newest first (:func:`newest_first`:
  the interactions with a time, newest first, then those without one, as given);
* ``recent_item_ratings``, ``recent_item_timestamps``: aligned with those ids, the rating
  (NaN when none was given, as the SQL stores an unrated event) and the time in whole epoch
  seconds, floored (:func:`epoch_seconds`; an interaction without a time gets the request
  time ``now``: it is happening now, as far as the model can tell);
* no interactions at all: every activity column is missing (the SQL has no activity row
  for such a user, and Feast returns nulls).

``tests/serving/test_features.py`` checks these against the SQL on every user of a dataset
and against Feast's online rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features import AGE_BUCKETS, EPOCH

# The columns (and exact types) of the Feast service user_tower_serving_v1, plus the key.
# The row dicts of this module and of Feast's to_dict() have these keys.
USER_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("age_bucket", pa.string()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("zip_prefix", pa.string()),
        ("user_interaction_count", pa.int64()),
        ("user_mean_rating", pa.float64()),
        ("user_genre_affinity", pa.list_(pa.float32())),
        ("recent_item_ids", pa.list_(pa.int64())),
        ("recent_item_ratings", pa.list_(pa.float64())),
        ("recent_item_timestamps", pa.list_(pa.int64())),
    ]
)
FEATURE_COLUMNS = [name for name in USER_SCHEMA.names if name != "user_id"]


def age_bucket(age: int | None) -> str | None:
    """``CASE WHEN age IS NULL THEN NULL WHEN age < 18 THEN '<18' ... ELSE '56+' END``."""
    if age is None:
        return None
    for upper, name in AGE_BUCKETS:
        if age < upper:
            return name
    return "56+"


def epoch_seconds(when: datetime) -> int:
    """Whole seconds since the epoch, floored: the SQL's ``EPOCH_SECONDS`` (exact, in
    integers; ``when`` timezone-aware)."""
    return (when - EPOCH) // timedelta(seconds=1)


def zip_prefix(zip_code: str | None) -> str | None:
    """``substr(zip_code, 1, 3)``: the first three code points."""
    return None if zip_code is None else zip_code[:3]


@dataclass(frozen=True)
class ItemGenres:
    """Which genres of a vocabulary each item has: a dense (items, genres) 0/1 matrix over
    sorted item ids (19 genres x 100K items is 1.9 MB)."""

    item_ids: np.ndarray  # (N,) int64, ascending
    flags: np.ndarray  # (N, G) uint8
    genres: tuple[str, ...]

    @classmethod
    def from_items(cls, items_path: Path, genres: Sequence[str]) -> ItemGenres:
        table = pq.read_table(items_path, columns=["item_id", "genres"])
        ids = table.column("item_id").to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        column = table.column("genres").combine_chunks()
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        rows = pc.list_parent_indices(column).to_numpy()
        slot = {g: k for k, g in enumerate(genres)}
        cols = np.array([slot.get(g, -1) if g is not None else -1 for g in flat], dtype=np.int64)
        flags = np.zeros((len(ids), len(genres)), dtype=np.uint8)
        keep = cols >= 0
        flags[rows[keep], cols[keep]] = 1  # a genre listed twice still counts once
        return cls(item_ids=ids[order], flags=flags[order], genres=tuple(genres))

    def counts(self, item_ids: np.ndarray) -> np.ndarray:
        """(G,) how many of ``item_ids`` (repeats counted) have each genre."""
        if item_ids.size == 0 or self.item_ids.size == 0:
            return np.zeros(len(self.genres), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.item_ids, item_ids), self.item_ids.size - 1)
        known = pos[self.item_ids[pos] == item_ids]
        return self.flags[known].sum(axis=0, dtype=np.int64)


@dataclass(frozen=True)
class Interaction:
    """One interaction of a cold-start user: the item, and optionally its rating and time
    (timezone-aware, so that times with different offsets compare)."""

    item_id: int
    rating: float | None = None
    timestamp: datetime | None = None


def newest_first(interactions: Sequence[Interaction]) -> list[Interaction]:
    """The interactions newest first: those with a time sorted by it, newest first (equal
    times keep the order given), then those without a time, in the order given (a client
    that sends no times sends its list newest first, as the API asks)."""
    timed = [(i.timestamp, i) for i in interactions if i.timestamp is not None]
    # sort is stable with reverse=True too: equal times keep their given order.
    timed.sort(key=lambda pair: pair[0], reverse=True)
    return [i for _, i in timed] + [i for i in interactions if i.timestamp is None]


def cold_start_row(
    *,
    age: int | None,
    gender: str | None,
    occupation: str | None,
    zip_code: str | None,
    recent: Sequence[Interaction],
    item_genres: ItemGenres,
    recent_items: int,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The feature columns of a user with this profile and these interactions (ordered by
    :func:`newest_first`), as Feast would return them; ``user_id`` is left out (the user
    has none). ``now`` (default: the current time) stands for missing interaction times."""
    ordered = newest_first(recent)
    request_time = epoch_seconds(now or datetime.now(UTC))
    ids = np.fromiter((i.item_id for i in ordered), dtype=np.int64, count=len(ordered))
    rated = [float(i.rating) for i in ordered if i.rating is not None]
    row: dict[str, Any] = {
        "age_bucket": age_bucket(age),
        "gender": gender,
        "occupation": occupation,
        "zip_prefix": zip_prefix(zip_code),
        "user_interaction_count": None,
        "user_mean_rating": None,
        "user_genre_affinity": None,
        "recent_item_ids": None,
        "recent_item_ratings": None,
        "recent_item_timestamps": None,
    }
    if ids.size:
        # DuckDB divides the two integer sums in double precision, then casts to FLOAT.
        affinity = (item_genres.counts(ids) / float(ids.size)).astype(np.float32)
        row.update(
            user_interaction_count=int(ids.size),
            # The SQL's sum(rating) / count(rating), in double precision.
            user_mean_rating=sum(rated) / len(rated) if rated else None,
            user_genre_affinity=affinity.tolist(),
            recent_item_ids=ids[:recent_items].tolist(),
            recent_item_ratings=[
                float("nan") if i.rating is None else float(i.rating)
                for i in ordered[:recent_items]
            ],
            recent_item_timestamps=[
                request_time if i.timestamp is None else epoch_seconds(i.timestamp)
                for i in ordered[:recent_items]
            ],
        )
    return row
