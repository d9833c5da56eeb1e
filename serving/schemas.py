"""The HTTP API's bodies (pydantic): what ``serving.app`` accepts and answers, and so what
its OpenAPI document (``/openapi.json``) promises.

The contract is checked by a fuzzer: ``tests/serving/test_schemathesis.py`` runs
schemathesis with all its checks against a live server, so every rule a request must obey
is one the JSON Schema can express (a schema-valid body is accepted, an invalid one gets a
422), and every body the server answers matches the model documented for its status.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from recsys.features.online import Interaction
from serving.loaded import MAX_K, MAX_RECENT_ITEMS

DEFAULT_K = 20
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _whole_number(value: object) -> object:
    """JSON Schema's ``integer`` is any number with no fractional part: 65.0 is one (a
    fuzzer sends it), 65.5, "65" and true are not (the strict int check that follows)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The validator goes after the bounds: it then wraps a plain bounded int, whose JSON Schema
# pydantic writes (before them, the bounds come out as unknown keys `ge`, `le`).
WholeNumber = BeforeValidator(_whole_number)
ItemId = Annotated[
    int, Field(ge=INT64_MIN, le=INT64_MAX, description="The item's id (int64)."), WholeNumber
]
Age = Annotated[int, Field(ge=0, le=150), WholeNumber]
K = Annotated[int, Field(ge=1, le=MAX_K, description="How many items."), WholeNumber]
# The ratings the interactions validation accepts (recsys.validation: 1 to 5); strict
# floats take integers too (4 is a rating, "4" is not).
Rating = Annotated[float, Field(ge=1.0, le=5.0, allow_inf_nan=False)]

# RFC 3339 section 5.6 `date-time`, the JSON Schema format: a date, `T`, a time, and a
# mandatory offset (so that any two times compare). Case-insensitive, as the RFC allows.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})",
    re.IGNORECASE | re.ASCII,  # ASCII: \d would match other scripts' digits too
)
# Year 0000 is taken as the earliest instant a datetime holds, older than any other.
EARLIEST = datetime.min.replace(tzinfo=timezone(timedelta(hours=23, minutes=59)))


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 date-time string as an aware datetime; ``ValueError`` (a 422 naming the
    field) for anything else: numbers, naive times, dates alone, other ISO 8601 forms."""
    if not isinstance(value, str):
        raise ValueError("a timestamp is an RFC 3339 string, e.g. 2024-05-01T12:30:00Z")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(
            "not an RFC 3339 date-time: give date, time and offset, e.g. 2024-05-01T12:30:00Z"
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7) or "", match.group(8).upper()
    minutes = 0
    if offset != "Z":
        hours, mins = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or mins > 59:
            raise ValueError(f"offset {offset} out of range (-23:59 to +23:59)")
        minutes = (hours * 60 + mins) * (-1 if offset[0] == "-" else 1)
    micro = int((fraction + "000000")[:6])
    if second == 60:  # a leap second: the last instant of its minute (a time only orders)
        second, micro = 59, 999_999
    try:
        # Year 0000 is in RFC 3339, not in datetime: checked as 2000 (both leap years).
        parsed = datetime(year or 2000, month, day, hour, minute, second, micro,
                          tzinfo=timezone(timedelta(minutes=minutes)))  # fmt: skip
    except ValueError as exc:  # month 13, 30 February, hour 24...
        raise ValueError(f"not a valid date-time: {exc}") from exc
    return parsed if year else EARLIEST


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# --- request ------------------------------------------------------------------------------
class RecentInteraction(BaseModel):
    """One interaction of the user: the item, and optionally how they rated it and when."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: ItemId
    rating: Rating | None = Field(
        None, description="The user's rating (1 to 5); null or absent for an unrated item."
    )
    timestamp: Timestamp | None = Field(
        None,
        description="When it happened (RFC 3339 with an offset); orders the list, and the "
        "user tower weighs it by how long ago it was. Absent: the time of the request.",
    )

    def interaction(self) -> Interaction:
        return Interaction(self.item_id, self.rating, self.timestamp)


class ColdStartRequest(BaseModel):
    """A user the feature store does not know: the profile, and what they interacted with
    so far. Types are strict: ``"30"`` is not an age."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "age": 31,
                    "gender": "F",
                    "occupation": "engineer",
                    "zip_code": "94110",
                    "recent": [
                        {"item_id": 50, "rating": 5.0, "timestamp": "2024-05-01T20:15:00Z"},
                        {"item_id": 181, "rating": 4.0, "timestamp": "2024-04-28T09:02:11Z"},
                        {"item_id": 258},
                    ],
                    "k": 10,
                }
            ]
        },
    )

    age: Age | None = None
    gender: str | None = Field(None, max_length=64)
    occupation: str | None = Field(None, max_length=128)
    zip_code: str | None = Field(None, max_length=32)
    recent: list[RecentInteraction] | None = Field(
        None,
        max_length=MAX_RECENT_ITEMS,
        description="What the user interacted with (repeats count), never recommended back. "
        "Order: the interactions with a timestamp, newest first (equal times keep the order "
        "given), then those without one in the order given; so a list without timestamps "
        "is taken as newest first. The ratings' mean is the user's mean-rating feature; the "
        "most recent ones are read in order, each with its rating and time, by the user tower.",
    )
    k: K = DEFAULT_K

    def interactions(self) -> list[Interaction]:
        return [r.interaction() for r in self.recent or ()]


# --- responses ----------------------------------------------------------------------------
class Item(BaseModel):
    item_id: int
    score: float = Field(description="The model's score: dot product of the user and item "
                         "vectors (higher is better), comparable within one version.")  # fmt: skip
    title: str | None = None
    genres: list[str] | None = None
    release_year: int | None = None


class Recommendations(BaseModel):
    user_id: int | None = Field(description="None for a cold-start request.")
    model_version: str
    fallback: bool = Field(False, description="True when the served version is a fallback "
                           "baseline (no two-tower passed the quality gate): the most "
                           "popular items the user has not seen.")  # fmt: skip
    model_kind: str = Field("two-tower", description="two-tower, or the fallback's baseline "
                            "(popularity, popularity (recent), segment popularity).")  # fmt: skip
    k: int
    excluded: int = Field(description="Already-seen items removed from the results.")
    history: list[int] = Field(default_factory=list, description="The recent item ids the "
                               "user tower read, newest first: the online store's for a "
                               "stored user, the request's for a new one.")  # fmt: skip
    items: list[Item]


class Candidates(BaseModel):
    user_id: int
    model_version: str = Field(description="The version these items are scored by.")
    stored_version: str = Field(description="The version of the row in the online store.")
    source: Literal["online_store", "recomputed"]
    items: list[Item]


class Problem(BaseModel):
    detail: str


class Readiness(BaseModel):
    """``/readyz`` (``serving.state.ServingState.readiness``): the first four fields always;
    the served version's details when ready, the reason when not."""

    model_config = ConfigDict(extra="forbid")

    ready: bool
    model_version: str | None = Field(description="The version being served.")
    current: str | None = Field(description="The version models/current.json names.")
    loading: str | None = Field(description="A version being loaded now.")
    error: str | None = Field(description="Why the last load failed.")
    reason: str | None = Field(None, description="Why not ready.")
    switching: bool | None = Field(None, description="current is loading; the previous "
                                   "version serves meanwhile.")  # fmt: skip
    as_of: str | None = Field(None, description="The online store holds events before this.")
    items: int | None = Field(None, description="Items in the version's table.")
    search: str | None = Field(None, description="Item search mode and index.")
    user_tower: str | None = Field(None, description="How the user tower runs (onnx...; "
                                   "none for a fallback).")  # fmt: skip
    fallback: bool | None = Field(None, description="The served version is a fallback "
                                  "baseline, not a two-tower.")  # fmt: skip
    model_kind: str | None = Field(None, description="two-tower, or the fallback's baseline "
                                   "(popularity).")  # fmt: skip
    derived_from: str | None = Field(None, description="The version whose weights this one "
                                     "carries, when a catalogue refresh derived it.")  # fmt: skip
    catalogue: dict[str, Any] | None = Field(None, description="The catalogue the version's "
                                             "item table was built from (dataset version, "
                                             "items; new and changed items of a refresh).")  # fmt: skip


def exact_request_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with the request bodies' schemas as pydantic writes them.

    FastAPI's OpenAPI model stores every bound as a float, and INT64_MAX as a float is
    2**63: its schema for an item id would take 2**63, which the model refuses (a fuzzer
    found it). pydantic's own JSON Schema keeps the integers exact.
    """
    components = openapi["components"]["schemas"]
    for model in (ColdStartRequest,):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return openapi
