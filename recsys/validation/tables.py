"""The checks of each canonical table (interactions, users, items, and the users' and items'
history of superseded versions), of a batch of user or item versions, and of feature tables;
and reading a batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.schema import (
    EVENT_ID,
    EXAMPLES,
    HISTORY,
    INTERACTIONS,
    INTERACTIONS_WITH_ID,
    PRIMARY_KEYS,
    TABLES,
    VALID_FROM,
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
    plain,
    schema_checks,
    top_user_share,
)
from recsys.validation.folder import read_canonical
from recsys.validation.report import ValidationReport
from recsys.validation.suite import run

AGE_RANGE = (0, 120)
RELEASE_YEAR_RANGE = (1800, 2100)
RANGES = {"users": ("age", *AGE_RANGE), "items": ("release_year", *RELEASE_YEAR_RANGE)}
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


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


def with_valid_from(frame: pd.DataFrame, default: pd.Timestamp) -> pd.DataFrame:
    """``frame`` with ``valid_from`` set to ``default`` where the column is absent: a table
    published before versions were recorded (the epoch), a batch without it (its arrival)."""
    return frame if VALID_FROM in frame.columns else frame.assign(**{VALID_FROM: default})


def _entity_checks(table: str, name: str, *, one_per_entity: bool) -> list[Check]:
    """The checks of user or item rows: one row per entity (the current table) or one per
    (entity, valid_from) (a history, a batch); ``name`` is the table as reports name it."""
    key = PRIMARY_KEYS[table]
    column, low, high = RANGES[table]
    unique = (
        is_unique(name, key)
        if one_per_entity
        else compound_unique(f"{name} versions unique", name, (key, VALID_FROM))
    )
    return [
        not_empty(name),
        *schema_checks(name, TABLES[table]),
        not_null(name, key),
        not_null(name, VALID_FROM),
        unique,
        between(name, column, low, high),
    ]


def _validate_entities(
    table: str, frame: pd.DataFrame, history: pd.DataFrame | None
) -> ValidationReport:
    frame = with_valid_from(frame, EPOCH)
    report = run(table, frame, _entity_checks(table, table, one_per_entity=True), TABLES[table])
    if history is None:
        return report
    name = HISTORY[table]
    checks = [*_entity_checks(table, name, one_per_entity=False), _before_current(table, frame)]
    past = run(name, history, checks, TABLES[table])
    return ValidationReport(table, report.rows, [*report.outcomes, *past.outcomes])


def _before_current(table: str, current: pd.DataFrame) -> Check:
    """Every superseded version belongs to an entity of the current table and is older than
    its current row (the current row is the latest version)."""
    key, name = PRIMARY_KEYS[table], HISTORY[table]
    latest = current.set_index(key)[VALID_FROM]

    def compute(frame: pd.DataFrame) -> tuple[bool, int, Any, str]:
        now = frame[key].map(latest)
        bad = frame[now.isna() | (now <= frame[VALID_FROM])]
        if bad.empty:
            return True, 0, None, f"every {name} row is an older version of a current row"
        examples = [plain(v) for v in bad[key].head(EXAMPLES)]
        return (False, len(bad), examples,
                f"{len(bad)} of {len(frame)} {name} rows are not older versions of a row in "
                f"{table} (unknown {key}, or valid_from not before the current row's); "
                f"e.g. {key} {examples}")  # fmt: skip

    return Check(f"{name} before current", VALID_FROM, (key, VALID_FROM), compute=compute)


def validate_users(frame: pd.DataFrame, history: pd.DataFrame | None = None) -> ValidationReport:
    """Check a users table: non-empty, canonical columns and dtypes, user_id not null and
    unique, valid_from not null (absent: the epoch), age within [0, 120] (nulls allowed); and
    ``history``, when given, by the same checks per (user_id, valid_from), each row an older
    version of a current user."""
    return _validate_entities("users", frame, history)


def validate_items(frame: pd.DataFrame, history: pd.DataFrame | None = None) -> ValidationReport:
    """Check an items table: non-empty, canonical columns and dtypes, item_id not null and
    unique, valid_from not null (absent: the epoch), release_year within [1800, 2100] (nulls
    allowed); and ``history`` as for :func:`validate_users`."""
    return _validate_entities("items", frame, history)


def validate_versions(table: str, frame: pd.DataFrame, as_of: pd.Timestamp) -> ValidationReport:
    """Check a batch of user or item versions (``table``: users or items): the checks of
    the table, one row per (id, valid_from) (rows repeated exactly are one row), and
    valid_from not after ``as_of``."""
    return run(table, _distinct(frame), version_checks(table, as_of), TABLES[table])


def version_checks(table: str, as_of: pd.Timestamp) -> list[Check]:
    """The checks :func:`validate_versions` runs."""
    limit = pd.Timestamp(as_of)
    limit = limit.tz_localize("UTC") if limit.tzinfo is None else limit.tz_convert("UTC")
    checks = _entity_checks(table, table, one_per_entity=False)
    checks.append(
        Check(
            f"{table}.valid_from not after as_of",
            VALID_FROM,
            (VALID_FROM,),
            expectation=lambda: gxe().ExpectColumnValuesToBeBetween(
                column=VALID_FROM, max_value=limit
            ),
            explain=explain_rows(f"have a valid_from after as_of {limit.isoformat()}"),
        )
    )
    return checks


def _distinct(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without rows repeated exactly (list cells compared by value)."""
    hashable = frame.map(lambda v: tuple(v) if isinstance(v, list | tuple | np.ndarray) else v)
    return frame[~hashable.astype(str).duplicated()].reset_index(drop=True)


def feature_table_columns(key: str, timestamp: str = "event_timestamp") -> tuple[str, ...]:
    """The columns of a feature table that :func:`validate_feature_table` checks."""
    return (key, timestamp, "created_timestamp")


def validate_feature_table(
    frame: pd.DataFrame,
    *,
    key: str,
    timestamp: str = "event_timestamp",
    table: str = "features",
) -> ValidationReport:
    """Check a feature table: non-empty, ``key`` and ``timestamp`` present and not null,
    ``timestamp`` a datetime, and (key, timestamp, created_timestamp if present) unique: one
    feature row per entity and time. Other columns are not checked, and not handed to GX: it
    fingerprints a batch by pickling the whole frame when a cell holds a list (the views'
    ``recent_item_ids``), which took 109 s of the 1M-interaction feature audit."""
    unique = (key, timestamp) + (("created_timestamp",) if "created_timestamp" in frame else ())
    frame = frame[[c for c in feature_table_columns(key, timestamp) if c in frame.columns]]
    checks = [
        not_empty(table),
        has_columns(table, [key, timestamp], exact=False),
        dtype_check(table, timestamp, "datetime"),
        not_null(table, key),
        not_null(table, timestamp),
        compound_unique(f"{table} rows unique", table, unique),
    ]
    return run(table, frame, checks, pa.schema([(timestamp, pa.timestamp("us"))]), [key])


def read_batch(path: Path, table: str = "interactions") -> pd.DataFrame:
    """Read a batch of ``table`` (interactions, users or items): one parquet file, or a
    folder's ``<table>.parquet``.

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
    file = path / f"{table}.parquet" if path.is_dir() else path
    if not file.is_file():
        raise DatasetValidationError(f"{file}: file is missing")
    if file.stat().st_size == 0:
        raise DatasetValidationError(f"{file}: file is empty (0 bytes), not a parquet file")
    read, casts = read_canonical(file, table)
    frame = read.to_pandas()
    frame.attrs["casts"] = [cast.as_dict() for cast in casts]
    return frame
