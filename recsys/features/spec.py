"""What a feature declaration is: a feature, the view that holds it, the catalogue of views.

A :class:`Feature` says what it is called, its type, how it is computed (``op``: data that
renders itself as DuckDB SQL and as Python, `recsys.features.ops`) and how the towers see
it (``encoding``). A :class:`View` groups the features of one entity computed the same way
(``kind``) and says how long a value stays valid. Every consumer (the feature SQL, the Feast
objects, the cold-start row, the towers' encoder) reads these; none keeps its own list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

import pyarrow as pa

Entity = Literal["user", "item"]
# Feast's value types by name, with the Arrow type of the tables' column (Feast's online rows
# have the same); `feature_repo/definitions.py` maps them to feast.types.
ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string[]": pa.list_(pa.string()),
    "int64[]": pa.list_(pa.int64()),
    "float32[]": pa.list_(pa.float32()),
    "float64[]": pa.list_(pa.float64()),
}
DTYPES = tuple(ARROW_TYPES)


class Encoding(StrEnum):
    """How a tower turns the feature into inputs (`recsys.features.encoding`)."""

    CATEGORICAL = "categorical"  # a vocabulary fitted on training rows; 0 = unseen or missing
    NUMERIC = "numeric"  # standardised on training rows, with a missing flag
    LOG_NUMERIC = "log_numeric"  # log1p (heavy-tailed counts), then as NUMERIC
    GENRE_SHARES = "genre_shares"  # one float per genre of the vocabulary, in its order
    GENRE_BAG = "genre_bag"  # a list of genres, multi-hot over the vocabulary
    HISTORY_ITEMS = "history_items"  # the recent item ids, newest first (item vocabulary)
    HISTORY_RATINGS = "history_ratings"  # aligned with the history: the rating given
    HISTORY_TIMES = "history_times"  # aligned with the history: the event time (epoch s)


class ViewKind(StrEnum):
    """How a view's rows are computed and stamped (`recsys.features.render`)."""

    STATIC = "static"  # entity attributes, one row per version stamped at its valid_from
    USER_EVENTS = "user_events"  # one row per (user, distinct event time), stamped ts + 1 µs
    ITEM_EVENTS = "item_events"  # one row per change point of the item's running values


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # one of DTYPES
    op: Any  # recsys.features.ops: how the value is computed from the dataset
    encoding: Encoding
    description: str = ""
    # Retired as a tower input: still computed, in Feast's views, services and online store,
    # so that the model versions trained on it keep loading and serving, but a new encoder
    # does not fit it (`recsys.features.inputs.TowerColumns.of`). Delete the feature once no
    # kept version's checkpoint lists it (its encoder's `cats` or `stats`).
    retired: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"feature {self.name}: dtype {self.dtype!r} is not one of {DTYPES}")


@dataclass(frozen=True)
class View:
    name: str
    entity: Entity
    kind: ViewKind
    ttl: timedelta  # timedelta(0): never expires
    features: tuple[Feature, ...]
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.entity}_id"


@dataclass(frozen=True)
class Service:
    """A Feast feature service: the views one consumer reads together."""

    name: str
    views: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Catalog:
    views: tuple[View, ...]
    services: tuple[Service, ...] = field(default=())

    def view(self, name: str) -> View:
        for view in self.views:
            if view.name == name:
                return view
        raise KeyError(f"no feature view {name!r}; views: {[v.name for v in self.views]}")

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"no feature service {name!r}")

    def feature(self, name: str) -> Feature:
        for f in self.features():
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r}")

    def retiring(self, names: Iterable[str]) -> Catalog:
        """This catalogue with exactly the features ``names`` retired as tower inputs and
        every other one not: the inputs an ablation or a test fits an encoder on (for
        example ``["zip_region"]``: the user tower as it was before zip_region)."""
        names = set(names)
        unknown = names - {f.name for f in self.features()}
        if unknown:
            raise ValueError(f"retired: no feature {sorted(unknown)} in the catalogue")
        views = tuple(replace(v, features=tuple(replace(f, retired=f.name in names)
                                                for f in v.features)) for v in self.views)  # fmt: skip
        return replace(self, views=views)

    def features(
        self, entity: Entity | None = None, encoding: Encoding | None = None
    ) -> tuple[Feature, ...]:
        """The features of ``entity`` (every entity if None) with ``encoding``, in
        declaration order."""
        return tuple(
            f
            for v in self.views
            if entity is None or v.entity == entity
            for f in v.features
            if encoding is None or f.encoding == encoding
        )
