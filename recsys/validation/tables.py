"""The checks of each canonical table (interactions, users, items) and of feature tables, and
reading a batch of interactions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.schema import (
    EVENT_ID,
    INTERACTIONS,
    INTERACTIONS_WITH_ID,
    PRIMARY_KEYS,
    TABLES,
    DatasetValidationError,
)
from recsys.validation.checks import (
    Check,
    between,
    compound_unique,
    dtype_check,
    explain_observed,
    explain_rows,
    gxe,
    has_columns,
    is_unique,
    known_ids,
    not_empty,
    not_null,
    schema_checks,
    top_user_share,
)
from recsys.validation.folder import read_canonical
from recsys.validation.report import ValidationReport
from recsys.validation.suite import run

AGE_RANGE = (0, 120)
RELEASE_YEAR_RANGE = (1800, 2100)


def _as_of_for(frame: pd.DataFrame, as_of: pd.Timestamp) -> pd.Timestamp:
    """``as_of`` comparable to the frame's event_timestamp (naive timestamps mean UTC)."""
    as_of = pd.Timestamp(as_of)
    column = frame["event_timestamp"] if "event_timestamp" in frame.columns else None
    naive_column = column is not None and getattr(column.dtype, "tz", None) is None
    if as_of.tzinfo is None:
        return as_of if naive_column else as_of.tz_localize("UTC")
    return as_of.tz_convert("UTC").tz_localize(None) if naive_column else as_of


def validate_interactions(
    frame: pd.DataFrame,
    *,
    as_of: pd.Timestamp | None = None,
    known_users: np.ndarray | None = None,
    known_items: np.ndarray | None = None,
    rating_range: tuple[float, float] = (1.0, 5.0),
    max_user_share: float | None = 0.5,
    event_id: bool | None = None,
) -> ValidationReport:
    """Check an interactions table or batch; every check's outcome is in the report.

    Checks: non-empty; exactly the canonical columns with compatible dtypes; user_id, item_id
    and event_timestamp not null; no duplicate (user_id, item_id, event_timestamp) event;
    rating within ``rating_range`` (nulls allowed); and, when given, event_timestamp not after
    ``as_of`` and every id among ``known_users`` / ``known_items``. Sanity bounds: the mean
    rating within ``rating_range`` and the most active user's share of the events at most
    ``max_user_share`` (None turns it off; a small batch from one user legitimately fails it).
    """
    low, high = rating_range
    # With the optional event_id column (required when ``event_id`` is True, refused when
    # False, as the frame has it when None) events are identified by it.
    with_id = EVENT_ID in frame.columns if event_id is None else event_id
    schema = INTERACTIONS_WITH_ID if with_id else INTERACTIONS
    key = (EVENT_ID,) if with_id else ("user_id", "item_id", "event_timestamp")
    checks = [not_empty("interactions"), *schema_checks("interactions", schema)]
    checks += [not_null("interactions", c) for c in ("user_id", "item_id", "event_timestamp")]
    if with_id:
        checks.append(not_null("interactions", EVENT_ID))
    checks += [
        # One event per key: by its id (one column), else by (user, item, time).
        replace(is_unique("interactions", EVENT_ID), name="interactions events unique")
        if with_id
        else compound_unique("interactions events unique", "interactions", key),
        between("interactions", "rating", low, high),
    ]
    if as_of is not None:
        limit = _as_of_for(frame, as_of)
        checks.append(
            Check(
                "interactions.event_timestamp not after as_of",
                "event_timestamp",
                ("event_timestamp",),
                expectation=lambda: gxe().ExpectColumnValuesToBeBetween(
                    column="event_timestamp", max_value=limit
                ),
                explain=explain_rows(f"have an event_timestamp after as_of {limit.isoformat()}"),
            )
        )
    if known_users is not None:
        checks.append(known_ids("user_id", known_users, "users"))
    if known_items is not None:
        checks.append(known_ids("item_id", known_items, "items"))
    checks.append(
        Check(
            "interactions.rating mean in range",
            "rating",
            ("rating",),
            expectation=lambda: gxe().ExpectColumnMeanToBeBetween(
                column="rating", min_value=low, max_value=high
            ),
            explain=explain_observed(f"the mean interactions.rating is outside [{low}, {high}]"),
            not_applicable=lambda f: None if f["rating"].notna().any() else "no ratings",
        )
    )
    if max_user_share is not None:
        checks.append(top_user_share(max_user_share))
    return run("interactions", frame, checks, schema)


def _entity_checks(table: str, column: str, low: int, high: int) -> list[Check]:
    key = PRIMARY_KEYS[table]
    return [
        not_empty(table),
        *schema_checks(table, TABLES[table]),
        not_null(table, key),
        is_unique(table, key),
        between(table, column, low, high),
    ]


def validate_users(frame: pd.DataFrame) -> ValidationReport:
    """Check a users table: non-empty, canonical columns and dtypes, user_id not null and
    unique, age within [0, 120] (nulls allowed)."""
    return run("users", frame, _entity_checks("users", "age", *AGE_RANGE), TABLES["users"])


def validate_items(frame: pd.DataFrame) -> ValidationReport:
    """Check an items table: non-empty, canonical columns and dtypes, item_id not null and
    unique, release_year within [1800, 2100] (nulls allowed)."""
    checks = _entity_checks("items", "release_year", *RELEASE_YEAR_RANGE)
    return run("items", frame, checks, TABLES["items"])


def validate_feature_table(
    frame: pd.DataFrame,
    *,
    key: str,
    timestamp: str = "event_timestamp",
    table: str = "features",
) -> ValidationReport:
    """Check a feature table: non-empty, ``key`` and ``timestamp`` present and not null,
    ``timestamp`` a datetime, and (key, timestamp, created_timestamp if present) unique: one
    feature row per entity and time. Other columns are not checked."""
    unique = (key, timestamp) + (("created_timestamp",) if "created_timestamp" in frame else ())
    checks = [
        not_empty(table),
        has_columns(table, [key, timestamp], exact=False),
        dtype_check(table, timestamp, "datetime"),
        not_null(table, key),
        not_null(table, timestamp),
        compound_unique(f"{table} rows unique", table, unique),
    ]
    return run(table, frame, checks, pa.schema([(timestamp, pa.timestamp("us"))]), [key])


def read_batch(path: Path) -> pd.DataFrame:
    """Read a batch of interactions: one parquet file, or a folder's ``interactions.parquet``.

    The canonical columns are cast to their exact types when no value changes (the rules of
    :mod:`recsys.casts`, shared with dataset folders); the casts applied are in
    ``frame.attrs["casts"]`` (a list of JSON-able dicts, one per column cast). Raises
    :class:`DatasetValidationError` naming the file when it is missing, empty or not readable
    parquet, and naming the file, the column and example rows when a cast would change values.
    The frame is not otherwise validated: a column of a type no cast bridges (text ids, say) is
    kept as stored for the type checks of :func:`validate_interactions`, which report it with
    every other problem of the batch.
    """
    path = Path(path)
    file = path / "interactions.parquet" if path.is_dir() else path
    if not file.is_file():
        raise DatasetValidationError(f"{file}: file is missing")
    if file.stat().st_size == 0:
        raise DatasetValidationError(f"{file}: file is empty (0 bytes), not a parquet file")
    table, casts = read_canonical(file, "interactions")
    frame = table.to_pandas()
    frame.attrs["casts"] = [cast.as_dict() for cast in casts]
    return frame
