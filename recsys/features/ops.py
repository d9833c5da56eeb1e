"""How each feature is computed from the dataset: small operations declared as data, each
rendering itself as DuckDB SQL (the offline tables, `recsys.features.render`) and as Python
(the cold-start row, `recsys.features.online`).

Static ops read columns of the entity's table (``users`` or ``items``): ``sql()`` is an
expression over them, ``py(raw)`` the same rule on one row's attributes. Event ops aggregate
the entity's interactions strictly before the row's time; the SQL comes in the pieces the
view templates assemble:

- ``USER_EVENTS`` (one row per (user, second)): ``partials`` aggregate the events ``e``
  (joined with their item ``i``) of one (user, second) group; ``user_sql`` combines them over
  the window ``w`` (every group so far) or ``recent`` (the last ``recent_items`` groups);
- ``ITEM_EVENTS`` (one row per change point): ``deltas`` are what one event ``ev`` adds when
  it happens, taken back ``days`` later for a trailing window; ``item_sql`` sums them over
  ``w``.

``py(history)`` computes the same value from a list of events, newest first. An op that a
kind of view cannot compute raises :class:`NotImplementedError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import numpy as np

from recsys.sql import string

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_seconds(when: datetime) -> int:
    """Whole seconds since the epoch, floored (exact, in integers; ``when`` timezone-aware):
    the Python side of :func:`epoch_seconds_sql`."""
    return (when - EPOCH) // timedelta(seconds=1)


def epoch_seconds_sql(ts: str) -> str:
    return f"CAST(floor(epoch_us({ts}) / 1000000.0) AS BIGINT)"


@dataclass(frozen=True)
class Params:
    """What one build fixes besides the declarations (both are in its manifest)."""

    genres: tuple[str, ...]  # the genre vocabulary, sorted
    recent_items: int  # how many recent interactions the history lists keep


class Event(Protocol):
    """One interaction as the Python side reads it (`recsys.features.online.Interaction`)."""

    @property
    def item_id(self) -> int: ...
    @property
    def rating(self) -> float | None: ...
    @property
    def timestamp(self) -> datetime | None: ...


@dataclass(frozen=True)
class History:
    """One entity's events before ``at``, newest first, and what the ops need to read them."""

    events: Sequence[Event]
    at: datetime  # the row's time; an event without a time is taken to happen at ``at``
    recent_items: int
    # (N,) item ids -> (G,) how many of them have each genre of the vocabulary
    genre_counts: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Delta:
    """An ``ITEM_EVENTS`` running sum's change: ``enter`` when the event happens, taken back
    ``days`` later (a trailing window) or never (None)."""

    enter: str
    days: int | None = None


class StaticOp:
    def sql(self) -> str:
        raise NotImplementedError(f"{self} has no SQL side")

    def py(self, raw: Mapping[str, Any]) -> Any:
        raise NotImplementedError(f"{self} has no Python side")


class EventOp:
    def partials(self, params: Params) -> dict[str, str]:
        raise NotImplementedError(f"{self} cannot be computed in a user_events view")

    def user_sql(self, params: Params) -> str:
        raise NotImplementedError(f"{self} cannot be computed in a user_events view")

    def deltas(self) -> dict[str, Delta]:
        raise NotImplementedError(f"{self} cannot be computed in an item_events view")

    def item_sql(self) -> str:
        raise NotImplementedError(f"{self} cannot be computed in an item_events view")

    def py(self, history: History) -> Any:
        raise NotImplementedError(f"{self} has no Python side")


@dataclass(frozen=True)
class Column(StaticOp):
    """A column of the entity's table, as it is."""

    column: str

    def sql(self) -> str:
        return self.column

    def py(self, raw: Mapping[str, Any]) -> Any:
        return raw[self.column]


@dataclass(frozen=True)
class Bucket(StaticOp):
    """The label of the first bucket whose upper bound is above the value, else ``top``;
    missing stays missing."""

    column: str
    bounds: tuple[tuple[int, str], ...]  # (upper bound, exclusive; label), ascending
    top: str

    def sql(self) -> str:
        cases = " ".join(
            f"WHEN {self.column} < {hi} THEN {string(label)}" for hi, label in self.bounds
        )
        return f"CASE WHEN {self.column} IS NULL THEN NULL {cases} ELSE {string(self.top)} END"

    def py(self, raw: Mapping[str, Any]) -> Any:
        value = raw[self.column]
        if value is None:
            return None
        return next((label for hi, label in self.bounds if value < hi), self.top)


@dataclass(frozen=True)
class Prefix(StaticOp):
    """The first ``length`` characters (code points: DuckDB's ``substr`` counts them, as
    Python slicing does) of a string column."""

    column: str
    length: int

    def sql(self) -> str:
        return f"substr({self.column}, 1, {self.length})"

    def py(self, raw: Mapping[str, Any]) -> Any:
        value = raw[self.column]
        return None if value is None else value[: self.length]


@dataclass(frozen=True)
class Count(EventOp):
    """How many interactions (repeats included); with ``rated``, only those with a rating."""

    rated: bool = False

    def partials(self, params: Params) -> dict[str, str]:
        return {"rating_n": "count(e.rating)"} if self.rated else {"n": "count(*)"}

    def user_sql(self, params: Params) -> str:
        return f"(sum({'rating_n' if self.rated else 'n'}) OVER w)::BIGINT"

    def deltas(self) -> dict[str, Delta]:
        if self.rated:
            return {"d_rating_n": Delta("(rating IS NOT NULL)::INT")}
        return {"d_total": Delta("1")}

    def item_sql(self) -> str:
        return f"(sum({'d_rating_n' if self.rated else 'd_total'}) OVER w)::BIGINT"

    def py(self, history: History) -> int:
        if self.rated:
            return sum(e.rating is not None for e in history.events)
        return len(history.events)


@dataclass(frozen=True)
class MeanRating(EventOp):
    """The mean of the ratings given (unrated interactions left out); missing when none."""

    def partials(self, params: Params) -> dict[str, str]:
        return {"rating_sum": "sum(e.rating)", "rating_n": "count(e.rating)"}

    def user_sql(self, params: Params) -> str:
        return "sum(rating_sum) OVER w / nullif(sum(rating_n) OVER w, 0)"

    def deltas(self) -> dict[str, Delta]:
        return {
            "d_rating_sum": Delta("coalesce(rating, 0)"),
            "d_rating_n": Delta("(rating IS NOT NULL)::INT"),
        }

    def item_sql(self) -> str:
        return "sum(d_rating_sum) OVER w / nullif(sum(d_rating_n) OVER w, 0)"

    def py(self, history: History) -> float | None:
        # The SQL's sum(rating) / count(rating), in double precision.
        rated = [float(e.rating) for e in history.events if e.rating is not None]
        return sum(rated) / len(rated) if rated else None


@dataclass(frozen=True)
class GenreShares(EventOp):
    """Per genre of the vocabulary, the share of the interactions whose item has it (an
    unknown item counts in the denominator and in no genre: the items' ``LEFT JOIN``)."""

    def partials(self, params: Params) -> dict[str, str]:
        return {
            "n": "count(*)",
            **{
                # An unknown item (no genres joined) has none: 0, not NULL.
                f"g{k}": f"sum(coalesce(list_contains(i.genres, {string(g)}), false)::INT)"
                for k, g in enumerate(params.genres)
            },
        }

    def user_sql(self, params: Params) -> str:
        shares = ", ".join(f"sum(g{k}) OVER w / sum(n) OVER w" for k in range(len(params.genres)))
        return f"[{shares}]::FLOAT[]"

    def py(self, history: History) -> list[float]:
        ids = np.fromiter((e.item_id for e in history.events), np.int64, len(history.events))
        # DuckDB divides the two integer sums in double precision, then casts to FLOAT.
        return (history.genre_counts(ids) / float(ids.size)).astype(np.float32).tolist()


# Each event's value in the recent lists: (its SQL over e, the grp column that lists them).
_RECENT = {
    "item_id": ("e.item_id", "items"),
    "rating": ("coalesce(e.rating, 'NaN'::DOUBLE)", "ratings"),
    "time": (epoch_seconds_sql("e.event_timestamp"), "times"),
}


@dataclass(frozen=True)
class Recent(EventOp):
    """The most recent interactions' item ids, ratings (NaN when unrated: Feast's online
    store would turn a null element into 0.0) or times (whole epoch seconds, floored), newest
    first, as many as the build's ``recent_items``; the lists of the three fields align."""

    field: Literal["item_id", "rating", "time"]

    def partials(self, params: Params) -> dict[str, str]:
        value, column = _RECENT[self.field]
        # One order for every field, so the lists align; within a second, by item id.
        order = "" if self.field == "time" else " ORDER BY e.item_id, e.rating"
        return {column: f"list({value}{order})"}

    def user_sql(self, params: Params) -> str:
        # The last `recent_items` groups hold at least that many events; newest first.
        column = _RECENT[self.field][1]
        return f"list_reverse(flatten(list({column}) OVER recent))[1:{params.recent_items}]"

    def py(self, history: History) -> list[Any]:
        recent = history.events[: history.recent_items]
        if self.field == "item_id":
            return [int(e.item_id) for e in recent]
        if self.field == "rating":
            return [float("nan") if e.rating is None else float(e.rating) for e in recent]
        return [epoch_seconds(e.timestamp or history.at) for e in recent]


@dataclass(frozen=True)
class TrailingCount(EventOp):
    """How many interactions in ``[t - days, t)``."""

    days: int

    def deltas(self) -> dict[str, Delta]:
        return {f"d{self.days}": Delta("1", self.days)}

    def item_sql(self) -> str:
        return f"(sum(d{self.days}) OVER w)::BIGINT"

    def py(self, history: History) -> int:
        start = history.at - timedelta(days=self.days)
        return sum(
            e.timestamp is not None and start <= e.timestamp < history.at for e in history.events
        )
