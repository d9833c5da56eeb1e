"""One model version, loaded whole: the immutable object every request works from.

A request takes the server's current :class:`Loaded` reference once, at its start, and uses
only that object: the user tower, the encoder, the item index and the seen-items map all
come from the same version, so no response can mix two versions, whatever a promotion does
meanwhile (see ``serving.state`` for how a new version replaces this one).

Loading checks that the pieces agree before anything is served: the checkpoint of the
version named by ``current.json``, the published LanceDB table of that same version (its
name carries the version id), vector width = the tower's dimension + 1 (the bias column of
``towers.model.index_vectors``), and the feature manifest that says up to when the online
store and the seen-items map are filled (``as_of``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import fallback
from recsys.features.online import Interaction, ItemGenres, cold_start_row
from recsys.io import read_json
from recsys.registry import ModelRegistry
from recsys.settings import Paths
from recsys.vectors import HNSW_EF_SEARCH, ItemIndex, SearchMode
from serving.encoding import RowEncoder
from serving.tower import TowerFn, TowerKind, load_user_tower
from towers.data import FeatureEncoder
from towers.model import TwoTower
from towers.train import load_checkpoint

log = logging.getLogger(__name__)

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


def _tower_examples(rows: RowEncoder, item_ids: np.ndarray) -> list[dict[str, np.ndarray]]:
    """A few different rows the fast user towers are checked on before serving."""
    now = int(time.time())
    return [
        rows.arrays(None, {}),
        rows.arrays(None, {"age_bucket": "25-34", "gender": "F", "user_interaction_count": 3,
                           "user_mean_rating": 4.0, "user_genre_affinity": [0.5, 0.25],
                           "recent_item_ids": item_ids[:3].tolist(),
                           "recent_item_ratings": [5.0, float("nan"), 2.0],
                           "recent_item_timestamps": [now - 60, now - 86_400, now - 10**7]},
                    now),
        rows.arrays(next(iter(rows.users), None), {"recent_item_ids": item_ids[-40:].tolist()}),
    ]  # fmt: skip


def attribute_columns(index: ItemIndex) -> dict[str, list[Any]]:
    """The response's attribute columns of every item: each of ITEM_FIELDS, all None when
    the table has no such column (so every item of a response has every field)."""
    rows = index.attributes(index.item_ids)  # one Arrow conversion, at load time
    return {name: [row.get(name) for row in rows] for name in ITEM_FIELDS}


def source_key(paths: Paths, version: str) -> tuple[str, str, str]:
    """What a loaded version depends on: the version and the published dataset and feature
    folders (each a symlink switched atomically by ``recsys.io.publish_dir``). A feature
    refresh publishes new folders, and the seen-items map is reloaded with them."""
    return (version, os.path.realpath(paths.dataset), os.path.realpath(paths.features))


def load_version(
    paths: Paths,
    version: str,
    search_mode: SearchMode = "auto",
    hnsw_ef: int = HNSW_EF_SEARCH,
    threads: int = 1,
) -> Loaded:
    """Load ``version`` whole (model, item index, seen items), check that the parts agree,
    and warm it up, so that the object is ready for traffic the moment it is swapped in."""
    started = time.perf_counter()
    key = source_key(paths, version)
    registry = ModelRegistry(paths.models)
    folder = registry.path(version)
    checkpoint = folder / "checkpoint.pt"
    if not (folder / "version.json").exists():
        raise VersionLoadError(f"model version {version} has no complete folder in {folder}")
    info = registry.info(version)
    if info.get("state") == "rejected":
        raise VersionLoadError(f"model version {version} failed its quality gate")
    if fallback.is_fallback(info):
        from serving.fallback import load_fallback

        return load_fallback(paths, version, info, search_mode, hnsw_ef, started)
    if not checkpoint.exists():
        raise VersionLoadError(f"model version {version} has no checkpoint in {folder}")
    model, encoder, cfg = load_checkpoint(checkpoint)
    model.eval()
    # Through the resolved links: a feature refresh publishing meanwhile cannot mix folders.
    dataset, features = Path(key[1]), Path(key[2])
    manifest = read_json(features / "manifest.json")
    as_of = pd.Timestamp(manifest["as_of"]).to_pydatetime()
    recent_items = int(manifest.get("recent_items", encoder.history))
    seen = SeenItems.from_parquet(dataset / "interactions.parquet", as_of)
    index = open_index(paths, version, search_mode, hnsw_ef)
    if index.dim != cfg.dim + 1:
        raise VersionLoadError(
            f"item table of {version} has {index.dim}-d vectors; the checkpoint's towers "
            f"need {cfg.dim} + 1 (bias)"
        )
    rows = RowEncoder(encoder)
    tower, tower_kind = load_user_tower(
        model.user_tower, folder, _tower_examples(rows, index.item_ids), threads
    )
    loaded = Loaded(
        version=version,
        model=model,
        tower=tower,
        tower_kind=tower_kind,
        encoder=encoder,
        index=index,
        attributes=attribute_columns(index),
        rows=rows,
        seen=seen,
        item_genres=ItemGenres.from_items(dataset / "items.parquet", encoder.genres),
        recent_items=recent_items,
        as_of=as_of,
        source=key,
    )
    # Warm-up: the first forward pass and search pay one-off costs (allocations, lazy
    # initialisation); paid here, before the swap, not by the first request.
    warm = loaded.cold_row(
        age=30, gender=None, occupation=None, zip_code=None,
        recent=[Interaction(item) for item in index.item_ids[:3].tolist()],
    )  # fmt: skip
    loaded.recommend(None, warm, 10, np.empty(0, dtype=np.int64))
    seconds = time.perf_counter() - started
    loaded = replace(loaded, load_seconds=seconds)
    log.info(
        "loaded model version %s in %.2fs: %s, user tower in %s, %d users with %d seen items",
        version, seconds, index, tower_kind, loaded.seen.users.size, loaded.seen.interactions,
    )  # fmt: skip
    return loaded


def open_index(paths: Paths, version: str, search_mode: SearchMode, hnsw_ef: int) -> ItemIndex:
    try:
        return ItemIndex.open(paths.lancedb, version, mode=search_mode, hnsw_ef=hnsw_ef)
    except (FileNotFoundError, LookupError) as exc:
        raise VersionLoadError(f"item table of version {version}: {exc}") from exc
