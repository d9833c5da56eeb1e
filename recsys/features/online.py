"""The user tower's input columns for a user the Feast store does not know (cold start),
computed in Python from the declarations (`recsys.features.catalog`).

The user tower was trained on the columns of the user views (``user_profile``,
``user_activity``: the Feast service ``user_tower_serving_v1``), computed in DuckDB from the
ops' SQL. A cold-start request carries the raw profile (age, gender, occupation, zip code)
and, optionally, the user's interactions so far (:class:`Interaction`: an item, optionally
its rating and time). :func:`cold_start_row` computes each column with its op's Python side,
the same rule as its SQL, so the model sees a new user exactly as it would see a stored one
with that profile and history: static ops read the profile, event ops the interactions
ordered by :func:`newest_first` (an interaction without a time is taken to happen at the
request time ``now``). No interactions at all: every event column is missing (the SQL has no
row for such a user, and Feast returns nulls).

The server and the backtest both build rows here. ``tests/serving/test_features.py`` checks
them against the SQL on every user of a dataset and against Feast's online rows;
``tests/features/test_ops.py`` checks each op's two sides on sampled events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.catalog import CATALOG
from recsys.features.ops import History
from recsys.features.spec import ARROW_TYPES, Catalog, ViewKind


def user_schema(catalog: Catalog = CATALOG) -> pa.Schema:
    """The key and the user features' columns, with their exact types: the keys of the rows
    of this module and of Feast's ``to_dict()`` for the user service."""
    features = catalog.features("user")
    return pa.schema([("user_id", pa.int64())] + [(f.name, ARROW_TYPES[f.dtype]) for f in features])


USER_SCHEMA = user_schema()
FEATURE_COLUMNS = [name for name in USER_SCHEMA.names if name != "user_id"]


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
    catalog: Catalog = CATALOG,
) -> dict[str, Any]:
    """The user feature columns of ``catalog`` for a user with this profile and these
    interactions, as Feast would return them; ``user_id`` is left out (the user has none).
    ``now`` (default: the current time) stands for missing interaction times."""
    profile = {"age": age, "gender": gender, "occupation": occupation, "zip_code": zip_code}
    history = History(newest_first(recent), now or datetime.now(UTC), recent_items,
                      item_genres.counts)  # fmt: skip
    row: dict[str, Any] = {}
    for view in catalog.views:
        if view.entity != "user":
            continue
        for f in view.features:
            if view.kind == ViewKind.STATIC:
                row[f.name] = f.op.py(profile)
            else:
                row[f.name] = f.op.py(history) if history.events else None
    return row
