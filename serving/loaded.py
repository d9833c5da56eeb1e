"""One model version, loaded: the immutable object every request works from (loaded and
checked by ``serving.load``).

A request takes the server's current :class:`Loaded` reference once, at its start, and uses
only that object: the user tower, the encoder, the item index and the seen-items map all
come from the same version, so no response can mix two versions, whatever a promotion does
meanwhile (see ``serving.state`` for how a new version replaces this one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.online import Interaction, ItemGenres, cold_start_row
from recsys.index.search import ItemIndex
from serving.tower import TowerFn, TowerKind

if TYPE_CHECKING:  # the two-tower's types: torch is imported when one is loaded
    from recsys.features.encoding import FeatureEncoder
    from recsys.features.row_encoding import RowEncoder
    from towers.model import TwoTower

# Largest k a request may ask for, and most interactions a cold-start request may send.
MAX_K = 100
MAX_RECENT_ITEMS = 1000
# Attribute columns of the item table that responses carry (when the table has them).
ITEM_FIELDS = ("title", "genres", "release_year")


class VersionLoadError(RuntimeError):
    """The version named by current.json cannot be served (missing or inconsistent parts)."""


@dataclass(frozen=True)
class SeenItems:
    """Every (user, item) interaction before ``as_of``, grouped by user (CSR layout).

    The online features hold only the 20 most recent items of a user; the full history is
    needed so that nothing a user already rated is recommended again. Three flat arrays
    instead of a dict of arrays: 10M interactions take 160 MB and build in seconds, and a
    lookup is one binary search.
    """

    users: np.ndarray  # (U,) int64, ascending
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (E,) int64, distinct and ascending within a user

    @classmethod
    def from_arrays(cls, user_ids: np.ndarray, item_ids: np.ndarray) -> SeenItems:
        users = np.asarray(user_ids, dtype=np.int64)
        items = np.asarray(item_ids, dtype=np.int64)
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        if users.size:  # drop repeated (user, item) pairs
            new = np.ones(users.size, dtype=bool)
            new[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
            users, items = users[new], items[new]
        uniq, starts = np.unique(users, return_index=True)
        offsets = np.append(starts, users.size).astype(np.int64)
        return cls(users=uniq, offsets=offsets, items=items)

    @classmethod
    def from_parquet(cls, path: Path, before: datetime) -> SeenItems:
        table = pq.read_table(path, columns=["user_id", "item_id", "event_timestamp"])
        ts = table.column("event_timestamp")
        table = table.filter(pc.less(ts, pa.scalar(pd.Timestamp(before), ts.type)))
        return cls.from_arrays(
            table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
        )

    def get(self, user_id: int) -> np.ndarray:
        """The distinct items of ``user_id`` (empty for a user without interactions)."""
        pos = int(np.searchsorted(self.users, user_id))
        if pos >= self.users.size or self.users[pos] != user_id:
            return np.empty(0, dtype=np.int64)
        return self.items[self.offsets[pos] : self.offsets[pos + 1]]

    @property
    def interactions(self) -> int:
        return int(self.items.size)


@dataclass(frozen=True, eq=False)
class Loaded:
    """A complete, consistent model version. Never mutated after :func:`load_version`."""

    version: str
    # None for a fallback version (recsys.fallback): a baseline with no towers.
    model: TwoTower | None
    # The user tower as run per request (serving.tower): ONNX Runtime over the version's
    # exported graph, else TorchScript, else the module; checked against the module.
    tower: TowerFn | None
    tower_kind: TowerKind | None
    encoder: FeatureEncoder | None
    index: ItemIndex
    # ITEM_FIELDS of every item as Python lists, in index.item_ids order: a response's
    # attributes by position (µs) instead of an Arrow take + to_pylist per request (0.2 ms).
    attributes: dict[str, list[Any]]
    rows: RowEncoder | None
    seen: SeenItems
    item_genres: ItemGenres
    recent_items: int  # length of recent_item_ids in the feature build
    as_of: datetime  # the online store and `seen` hold events before this
    source: tuple[str, str, str] = ("", "", "")  # (version, dataset, features) it came from
    load_seconds: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    model_kind: str = "two-tower"  # or a fallback's baseline ("popularity")
    # A fallback's query from the feature row (segment popularity: the segment's one-hot);
    # None: [1] (serving.fallback).
    fallback_query: Callable[[dict[str, Any]], np.ndarray] | None = None
    # version.json's: the catalogue its item table was built from, and the version whose
    # weights it carries when a catalogue refresh derived it (evaluation.catalogue).
    catalogue: dict[str, Any] | None = None
    derived_from: str | None = None

    @property
    def fallback(self) -> bool:
        return self.model is None

    # --- the user tower ---------------------------------------------------------------------
    def query(self, user_id: int | None, row: dict[str, Any]) -> np.ndarray:
        """The query vector ``[u, 1]`` (d + 1,) of one user's feature row.

        ``user_id`` None: the unknown-user slot (0) of the id embedding, as for a cold-start
        request (training taught that slot by id dropout).

        History times are measured back from the time the row describes: a stored user's
        row is the online store's, a snapshot as of ``as_of`` (so the answer equals the
        candidates step's, which embeds users as of ``as_of``, and does not drift with the
        clock between feature refreshes); a cold-start row (``user_id`` None) is the
        request's: from its ``request_time`` (:meth:`cold_row`), else from now.
        """
        if self.tower is None or self.rows is None:  # a fallback: [1] · [item score]
            if self.fallback_query is not None:
                return self.fallback_query(row)
            return np.ones(1, dtype=np.float32)
        now = row.get("request_time") if user_id is None else self.as_of.timestamp()
        user = self.tower(self.rows.arrays(user_id, row, now))  # (1, d)
        return np.append(user[0], np.float32(1.0))  # towers.model.query_vectors of one row

    def knows_user(self, user_id: int) -> bool:
        """The user had an id embedding in training (encoder vocabulary); for a fallback,
        the user has interactions before ``as_of``."""
        if self.rows is None:
            return bool(self.seen.get(user_id).size)
        return self.rows.knows(user_id)

    # --- retrieval ------------------------------------------------------------------------
    def recommend(
        self, user_id: int | None, row: dict[str, Any], k: int, exclude: np.ndarray
    ) -> list[dict[str, Any]]:
        """Top ``k`` items for one user's feature row, ``exclude`` removed, best first."""
        ids, scores = self.index.search(self.query(user_id, row), k, exclude=exclude)
        return self.describe(ids, scores)

    def describe(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """Item ids and scores with the item table's attributes (title, genres...).

        Raises ``KeyError`` for an id that is not in this version's table.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return []
        catalogue = self.index.item_ids
        pos = np.minimum(np.searchsorted(catalogue, ids), catalogue.size - 1)
        if not np.array_equal(catalogue[pos], ids):
            raise KeyError(f"item ids not in version {self.version}: {ids[catalogue[pos] != ids]}")
        columns = self.attributes
        return [
            {"item_id": item, "score": score, **{name: columns[name][p] for name in columns}}
            for item, score, p in zip(ids.tolist(), np.asarray(scores).tolist(), pos.tolist(),
                                      strict=True)
        ]  # fmt: skip

    def cold_row(
        self,
        *,
        age: int | None,
        gender: str | None,
        occupation: str | None,
        zip_code: str | None,
        recent: Sequence[Interaction] = (),
    ) -> dict[str, Any]:
        """The feature row of a user the store does not know (``recsys.features.online``), plus
        ``request_time``: the request's time in whole epoch seconds, which stands for the
        missing interaction times and is what :meth:`query` measures the history back from
        (one clock reading for both: the same request gives the same answer)."""
        now = datetime.now(UTC).replace(microsecond=0)
        row = cold_start_row(
            age=age,
            gender=gender,
            occupation=occupation,
            zip_code=zip_code,
            recent=recent,
            item_genres=self.item_genres,
            recent_items=self.recent_items,
            now=now,
        )
        return {**row, "request_time": now.timestamp()}
