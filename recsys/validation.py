"""Great Expectations validation of the canonical tables: every check's outcome, not just the first.

:func:`recsys.schema.validate_dataset` (DuckDB, streaming) stops at the first problem of a
dataset folder. This module is its complement for frames already in memory (a dataset table,
a batch of new interactions, a feature table): it runs a whole suite and reports each check's
outcome, so a Dagster blocking asset check can show everything that is wrong at once.

Most checks are GX 1.x expectations run on one pandas batch in an ephemeral context. A few are
computed in pandas and reported in the same :class:`CheckOutcome` shape:

- dtypes: ``ExpectColumnValuesToBeInTypeList`` compares exact dtypes (it cannot say "any integer
  width" or "any tz-aware timestamp") and switches to a per-row check on object columns;
- membership in the known users / items: ``ExpectColumnValuesToBeInSet`` re-serialises its value
  set (a pydantic ``.dict()``) about a hundred times per run, about 20 s for a 100K-id set,
  where ``Series.isin`` takes milliseconds;
- the share of the most active user: GX has no expectation for it.

A check on a column that is missing or has an incompatible dtype is not run; it is reported as
failed with a detail starting ``skipped:`` (a blocking check must not pass on data it could not
look at). Integer columns may arrive as float64 holding whole numbers: that is what pandas makes
of an integer column with nulls, so it is accepted and the nulls are reported as nulls.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.schema import (
    EVENT_ID,
    EXAMPLES,
    INTERACTIONS,
    INTERACTIONS_WITH_ID,
    PRIMARY_KEYS,
    TABLES,
    DatasetValidationError,
    read_canonical,
)

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
AGE_RANGE = (0, 120)
RELEASE_YEAR_RANGE = (1800, 2100)
SHARE_MIN_USERS = 20  # the most-active-user share is checked from this many users on


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result: what was checked, whether it passed, and a sentence saying why."""

    name: str  # e.g. "interactions.user_id not null"
    table: str
    column: str | None
    success: bool
    unexpected_count: int  # rows failing the check; 0 for table-level checks
    observed: Any  # a short JSON-able value (a count, a mean, example values) or None
    detail: str  # a human sentence; names the problem and up to 5 example offending values


@dataclass(frozen=True)
class ValidationReport:
    """Every check's outcome for one table."""

    table: str
    rows: int
    outcomes: list[CheckOutcome]

    @property
    def success(self) -> bool:
        return all(outcome.success for outcome in self.outcomes)

    @property
    def failed(self) -> list[CheckOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-able summary (e.g. for Dagster asset-check metadata)."""
        return {
            "table": self.table,
            "rows": self.rows,
            "success": self.success,
            "passed": len(self.outcomes) - len(self.failed),
            "failed": len(self.failed),
            "checks": {
                o.name: {"success": o.success, "unexpected_count": o.unexpected_count}
                for o in self.outcomes
            },
        }

    def markdown(self) -> str:
        """A markdown table of the checks, failed ones first (for a UI)."""
        status = "passed" if self.success else f"{len(self.failed)} failed"
        lines = [
            f"**{self.table}**: {self.rows} rows, {len(self.outcomes)} checks, {status}",
            "",
            "| check | result | unexpected rows | detail |",
            "|---|---|---|---|",
        ]
        for o in sorted(self.outcomes, key=lambda o: o.success):
            detail = o.detail.replace("|", "\\|").replace("\n", " ")
            mark = "pass" if o.success else "**FAIL**"
            lines.append(f"| {o.name} | {mark} | {o.unexpected_count} | {detail} |")
        return "\n".join(lines)


# --- check specifications --------------------------------------------------------------------

# Turns a GX result dict (and the frame's row count) into (unexpected_count, observed, detail)
# for a failed check.
Explain = Callable[[dict[str, Any], int], tuple[int, Any, str]]
# A pandas check: the frame in, (success, unexpected_count, observed, detail) out.
Compute = Callable[[pd.DataFrame], tuple[bool, int, Any, str]]


@dataclass(frozen=True)
class _Check:
    name: str
    column: str | None
    needs: tuple[str, ...]  # columns that must exist with a compatible dtype for the check to run
    expectation: Callable[[], Expectation] | None = None  # a GX check ...
    explain: Explain | None = None
    compute: Compute | None = None  # ... or a pandas one
    # Returns a reason when the check does not apply to this frame (it then passes).
    not_applicable: Callable[[pd.DataFrame], str | None] | None = None


def _plain(value: Any) -> Any:
    """A JSON-able, readable version of a value from a frame or a GX result."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _examples(values: Sequence[Any]) -> list[Any]:
    """Up to EXAMPLES distinct values, in order of appearance."""
    seen: list[Any] = []
    for value in (_plain(v) for v in values):
        if value not in seen:
            seen.append(value)
        if len(seen) == EXAMPLES:
            break
    return seen


def _rows_failing(problem: str, *, by_index: bool = False) -> Explain:
    """Explain a failed GX column-map expectation: '<n> of <rows> rows <problem>; e.g. ...'."""

    def explain(result: dict[str, Any], rows: int) -> tuple[int, Any, str]:
        count = int(result.get("unexpected_count") or 0)
        if by_index:  # the values themselves (nulls) say nothing; show where they are
            where = _examples(result.get("partial_unexpected_index_list") or [])
            return count, where, f"{count} of {rows} rows {problem} (row index {where})"
        examples = _examples(result.get("partial_unexpected_list") or [])
        return count, examples, f"{count} of {rows} rows {problem}; e.g. {examples}"

    return explain


def _observed(problem: str) -> Explain:
    """Explain a failed GX aggregate expectation: '<problem> (observed <value>)'."""

    def explain(result: dict[str, Any], rows: int) -> tuple[int, Any, str]:
        observed = _plain(result.get("observed_value"))
        return 0, observed, f"{problem} (observed {observed})"

    return explain


def _columns_explain(table: str) -> Explain:
    def explain(result: dict[str, Any], rows: int) -> tuple[int, Any, str]:
        mismatched = (result.get("details") or {}).get("mismatched") or {}
        missing, extra = mismatched.get("missing") or [], mismatched.get("unexpected") or []
        parts = [f"missing column(s) {sorted(missing)}"] if missing else []
        parts += [f"unexpected column(s) {sorted(extra)}"] if extra else []
        found = _plain(result.get("observed_value"))
        return 0, found, f"{table}: {' and '.join(parts)}; found {found}"

    return explain


def _not_empty(table: str) -> _Check:
    return _Check(
        f"{table} not empty",
        None,
        (),
        expectation=lambda: _gxe().ExpectTableRowCountToBeBetween(min_value=1),
        explain=_observed(f"{table} has no rows"),
    )


def _columns(table: str, names: Sequence[str], *, exact: bool) -> _Check:
    return _Check(
        f"{table} columns",
        None,
        (),
        expectation=lambda: _gxe().ExpectTableColumnsToMatchSet(
            column_set=list(names), exact_match=exact
        ),
        explain=_columns_explain(table),
    )


def _not_null(table: str, column: str) -> _Check:
    return _Check(
        f"{table}.{column} not null",
        column,
        (column,),
        expectation=lambda: _gxe().ExpectColumnValuesToNotBeNull(column=column),
        explain=_rows_failing(f"have a null {table}.{column}", by_index=True),
    )


def _unique(table: str, column: str) -> _Check:
    return _Check(
        f"{table}.{column} unique",
        column,
        (column,),
        expectation=lambda: _gxe().ExpectColumnValuesToBeUnique(column=column),
        explain=_rows_failing(f"share their {table}.{column} with another row"),
    )


def _compound_unique(name: str, table: str, columns: tuple[str, ...]) -> _Check:
    return _Check(
        name,
        None,
        columns,
        expectation=lambda: _gxe().ExpectCompoundColumnsToBeUnique(column_list=list(columns)),
        explain=_rows_failing(f"share their ({', '.join(columns)}) with another row"),
    )


def _between(table: str, column: str, low: Any, high: Any) -> _Check:
    return _Check(
        f"{table}.{column} in range",
        column,
        (column,),
        expectation=lambda: _gxe().ExpectColumnValuesToBeBetween(
            column=column, min_value=low, max_value=high
        ),
        explain=_rows_failing(f"have {table}.{column} outside [{low}, {high}]"),
    )


# --- dtypes ----------------------------------------------------------------------------------


def _kind(expected: pa.DataType) -> str:
    """The pandas-level kind a canonical Arrow type allows (any width, unit or timezone)."""
    if pa.types.is_integer(expected):
        return "integer"
    if pa.types.is_floating(expected):
        return "number"
    if pa.types.is_string(expected):
        return "string"
    if pa.types.is_timestamp(expected):
        return "datetime"
    if pa.types.is_list(expected):
        return "list"
    raise TypeError(expected)


def _dtype_problem(series: pd.Series, kind: str) -> str | None:
    """Why ``series`` cannot hold a column of ``kind``, or None when it can."""
    dtype = series.dtype
    api = pd.api.types
    values = series.dropna()
    if kind in ("integer", "number") and api.is_bool_dtype(dtype):
        ok = False
    elif kind == "integer":
        ok = api.is_integer_dtype(dtype)
        if api.is_float_dtype(dtype):  # pandas' integers-with-nulls: whole numbers only
            floats = values.to_numpy(dtype=float)
            whole = np.isfinite(floats) & (np.floor(floats) == floats)
            if whole.all():
                return None
            return f"has dtype {dtype} with non-integer values, e.g. {_examples(values[~whole])}"
    elif kind == "number":
        ok = api.is_integer_dtype(dtype) or api.is_float_dtype(dtype)
    elif kind == "string":  # a string dtype, or an object column of str (or only nulls)
        ok = api.is_string_dtype(dtype) and api.infer_dtype(values) in ("string", "empty")
    elif kind == "datetime":
        ok = api.is_datetime64_any_dtype(dtype)
    else:  # list: an object column of sequences (pyarrow gives numpy arrays)
        ok = api.is_object_dtype(dtype) and all(
            isinstance(v, list | tuple | np.ndarray) for v in values
        )
    if ok:
        return None
    return f"has dtype {dtype}, expected {kind} values; e.g. {_examples(values.head(EXAMPLES))}"


def _dtype_check(table: str, column: str, kind: str) -> _Check:
    def compute(frame: pd.DataFrame) -> tuple[bool, int, Any, str]:
        if column not in frame.columns:
            return False, 0, None, f"{table}.{column} is missing"
        problem = _dtype_problem(frame[column], kind)
        dtype = str(frame[column].dtype)
        if problem is None:
            return True, 0, dtype, f"{table}.{column} has dtype {dtype} ({kind})"
        return False, 0, dtype, f"{table}.{column} {problem}"

    return _Check(f"{table}.{column} type", column, (), compute=compute)


def _schema_checks(table: str, schema: pa.Schema) -> list[_Check]:
    return [_columns(table, schema.names, exact=True)] + [
        _dtype_check(table, field.name, _kind(field.type)) for field in schema
    ]


# --- running ---------------------------------------------------------------------------------


@functools.cache
def _quiet_gx() -> None:
    """Import GX (about 5 s, so only when a check runs) and silence its logging.

    GX logs at INFO during a run (each ephemeral context announces a temporary docs directory),
    and one of its modules sets its own logger to INFO on import, so this runs after the import.
    A check's outcome is the report, not the log. The "Calculating Metrics" progress bars are
    turned off per context, in :func:`_run_gx`.
    """
    import great_expectations  # noqa: F401

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _gxe() -> Any:
    _quiet_gx()
    import great_expectations.expectations as gxe

    return gxe


def _run_gx(table: str, frame: pd.DataFrame, checks: list[_Check]) -> dict[str, Any]:
    """Run the GX checks as one suite on one batch; their results by check name."""
    if not checks:
        return {}
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(table)
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe(table)
    )
    suite = gx.ExpectationSuite(name=table)
    for check in checks:
        assert check.expectation is not None
        expectation = check.expectation()
        expectation.meta = {"check": check.name}  # results come back in another order
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    results = batch.validate(suite, result_format=RESULT_FORMAT).results
    return {r.expectation_config.meta["check"]: r for r in results if r.expectation_config}


def _gx_outcome(check: _Check, table: str, result: Any, rows: int) -> CheckOutcome:
    def outcome(success: bool, count: int, observed: Any, detail: str) -> CheckOutcome:
        return CheckOutcome(check.name, table, check.column, success, count, observed, detail)

    if result is None:
        return outcome(False, 0, None, "Great Expectations returned no result for this check")
    info = result.exception_info or {}
    # One expectation reports {"raised_exception": ...}; a metric failure, {metric id: {...}}.
    errors = [info] if "raised_exception" in info else list(info.values())
    messages = [str(e.get("exception_message")) for e in errors if e.get("raised_exception")]
    if messages:
        return outcome(False, 0, None, f"error while checking: {'; '.join(sorted(set(messages)))}")
    body = result.result or {}
    if result.success:
        observed = _plain(body.get("observed_value"))
        detail = f"passed ({rows} rows)" if observed is None else f"passed (observed {observed})"
        return outcome(True, 0, observed, detail)
    assert check.explain is not None
    count, observed, detail = check.explain(body, rows)
    return outcome(False, count, observed, detail)


def _usability(frame: pd.DataFrame, schema: pa.Schema | None) -> dict[str, str]:
    """Why each unusable column (missing, or of an incompatible dtype) is unusable."""
    if schema is None:
        return {}
    reasons = {}
    for field in schema:
        if field.name not in frame.columns:
            reasons[field.name] = f"column '{field.name}' is missing"
        elif (problem := _dtype_problem(frame[field.name], _kind(field.type))) is not None:
            reasons[field.name] = f"column '{field.name}' {problem}"
    return reasons


def _run(
    table: str,
    frame: pd.DataFrame,
    checks: list[_Check],
    schema: pa.Schema | None,
    extra_missing: Sequence[str] = (),
) -> ValidationReport:
    """Run ``checks`` on ``frame``: GX ones as one suite, pandas ones directly, skipping (as
    failed) those whose columns are unusable."""
    unusable = _usability(frame, schema)
    unusable.update({c: f"column '{c}' is missing" for c in extra_missing if c not in frame})
    rows = len(frame)
    decided: dict[str, CheckOutcome] = {}
    to_gx = []
    for check in checks:
        reasons = [unusable[c] for c in check.needs if c in unusable]
        why_not = None if reasons or check.not_applicable is None else check.not_applicable(frame)
        if reasons:
            decided[check.name] = CheckOutcome(
                check.name, table, check.column, False, 0, None, f"skipped: {'; '.join(reasons)}"
            )
        elif why_not is not None:
            decided[check.name] = CheckOutcome(
                check.name, table, check.column, True, 0, None, f"not applicable: {why_not}"
            )
        elif check.compute is not None:
            success, count, observed, detail = check.compute(frame)
            decided[check.name] = CheckOutcome(
                check.name, table, check.column, success, count, _plain(observed), detail
            )
        else:
            to_gx.append(check)
    results = _run_gx(table, frame, to_gx)
    for check in to_gx:
        decided[check.name] = _gx_outcome(check, table, results.get(check.name), rows)
    return ValidationReport(table, rows, [decided[check.name] for check in checks])


# --- the tables ------------------------------------------------------------------------------


def _known(column: str, known: np.ndarray, what: str) -> _Check:
    """Membership in a set of known ids, in pandas (GX's is too slow for a large set)."""
    known = np.unique(np.asarray(known))

    def compute(frame: pd.DataFrame) -> tuple[bool, int, Any, str]:
        values = frame[column]
        unknown = values[values.notna() & ~values.isin(known).astype(bool)]
        if unknown.empty:
            return True, 0, None, f"every {column} is one of the {len(known)} known {what}"
        examples = _examples(unknown)
        return (
            False,
            len(unknown),
            examples,
            f"{len(unknown)} of {len(frame)} rows have an interactions.{column} that is not one "
            f"of the {len(known)} known {what}; e.g. {examples}",
        )

    return _Check(f"interactions.{column} known", column, (column,), compute=compute)


def _top_user_share(max_share: float) -> _Check:
    def compute(frame: pd.DataFrame) -> tuple[bool, int, Any, str]:
        counts = frame["user_id"].value_counts()
        top, events = _plain(counts.index[0]), int(counts.iloc[0])
        share = events / len(frame)
        sentence = f"user {top} has {events} of {len(frame)} events ({share:.1%})"
        if share <= max_share:
            return True, 0, round(share, 4), f"the most active {sentence}"
        return False, events, round(share, 4), f"{sentence}, more than {max_share:.0%}"

    return _Check(
        "interactions.user_id top share",
        "user_id",
        ("user_id",),
        compute=compute,
        # A share bound describes a population: with a handful of users (a test fixture, a
        # first day of data) one user holding most events is normal.
        not_applicable=lambda f: None
        if f["user_id"].nunique() >= SHARE_MIN_USERS
        else f"fewer than {SHARE_MIN_USERS} users",
    )


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
    checks = [_not_empty("interactions"), *_schema_checks("interactions", schema)]
    checks += [_not_null("interactions", c) for c in ("user_id", "item_id", "event_timestamp")]
    if with_id:
        checks.append(_not_null("interactions", EVENT_ID))
    checks += [
        # One event per key: by its id (one column), else by (user, item, time).
        replace(_unique("interactions", EVENT_ID), name="interactions events unique")
        if with_id
        else _compound_unique("interactions events unique", "interactions", key),
        _between("interactions", "rating", low, high),
    ]
    if as_of is not None:
        limit = _as_of_for(frame, as_of)
        checks.append(
            _Check(
                "interactions.event_timestamp not after as_of",
                "event_timestamp",
                ("event_timestamp",),
                expectation=lambda: _gxe().ExpectColumnValuesToBeBetween(
                    column="event_timestamp", max_value=limit
                ),
                explain=_rows_failing(f"have an event_timestamp after as_of {limit.isoformat()}"),
            )
        )
    if known_users is not None:
        checks.append(_known("user_id", known_users, "users"))
    if known_items is not None:
        checks.append(_known("item_id", known_items, "items"))
    checks.append(
        _Check(
            "interactions.rating mean in range",
            "rating",
            ("rating",),
            expectation=lambda: _gxe().ExpectColumnMeanToBeBetween(
                column="rating", min_value=low, max_value=high
            ),
            explain=_observed(f"the mean interactions.rating is outside [{low}, {high}]"),
            not_applicable=lambda f: None if f["rating"].notna().any() else "no ratings",
        )
    )
    if max_user_share is not None:
        checks.append(_top_user_share(max_user_share))
    return _run("interactions", frame, checks, schema)


def _entity_checks(table: str, column: str, low: int, high: int) -> list[_Check]:
    key = PRIMARY_KEYS[table]
    return [
        _not_empty(table),
        *_schema_checks(table, TABLES[table]),
        _not_null(table, key),
        _unique(table, key),
        _between(table, column, low, high),
    ]


def validate_users(frame: pd.DataFrame) -> ValidationReport:
    """Check a users table: non-empty, canonical columns and dtypes, user_id not null and
    unique, age within [0, 120] (nulls allowed)."""
    return _run("users", frame, _entity_checks("users", "age", *AGE_RANGE), TABLES["users"])


def validate_items(frame: pd.DataFrame) -> ValidationReport:
    """Check an items table: non-empty, canonical columns and dtypes, item_id not null and
    unique, release_year within [1800, 2100] (nulls allowed)."""
    checks = _entity_checks("items", "release_year", *RELEASE_YEAR_RANGE)
    return _run("items", frame, checks, TABLES["items"])


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
        _not_empty(table),
        _columns(table, [key, timestamp], exact=False),
        _dtype_check(table, timestamp, "datetime"),
        _not_null(table, key),
        _not_null(table, timestamp),
        _compound_unique(f"{table} rows unique", table, unique),
    ]
    return _run(table, frame, checks, pa.schema([(timestamp, pa.timestamp("us"))]), [key])


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
