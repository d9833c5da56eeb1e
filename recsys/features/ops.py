"""How each feature is computed from the dataset: small operations declared as data.

Static ops read one column of the entity's table (``users`` or ``items``); event ops
aggregate the entity's interactions strictly before the row's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Column:
    """A column of the entity's table, as it is."""

    column: str


@dataclass(frozen=True)
class Bucket:
    """The label of the first bucket whose upper bound is above the value, else ``top``;
    missing stays missing."""

    column: str
    bounds: tuple[tuple[int, str], ...]  # (upper bound, exclusive; label), ascending
    top: str


@dataclass(frozen=True)
class Prefix:
    """The first ``length`` characters (code points) of a string column."""

    column: str
    length: int


@dataclass(frozen=True)
class Count:
    """How many interactions (repeats included)."""


@dataclass(frozen=True)
class MeanRating:
    """The mean of the ratings given (unrated interactions left out); missing when none."""


@dataclass(frozen=True)
class GenreShares:
    """Per genre of the vocabulary, the share of the interactions whose item has it (an
    unknown item counts in the denominator and in no genre)."""


@dataclass(frozen=True)
class Recent:
    """The most recent interactions' item ids, ratings (NaN when unrated) or times (whole
    epoch seconds, floored), newest first; as many as the build's ``recent_items``."""

    field: Literal["item_id", "rating", "time"]


@dataclass(frozen=True)
class TrailingCount:
    """How many interactions in ``[t - days, t)``."""

    days: int
