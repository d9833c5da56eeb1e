"""The check specifications: GX expectations, or pandas computations where GX cannot say it
(any integer width, a large id set, the most active user's share), each with the sentence
that explains a failure."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.schema import EXAMPLES

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

SHARE_MIN_USERS = 20  # the most-active-user share is checked from this many users on


# Turns a GX result dict (and the frame's row count) into (unexpected_count, observed, detail)
# for a failed check.
Explain = Callable[[dict[str, Any], int], tuple[int, Any, str]]
# A pandas check: the frame in, (success, unexpected_count, observed, detail) out.
Compute = Callable[[pd.DataFrame], tuple[bool, int, Any, str]]


@dataclass(frozen=True)
class Check:
    """One check: a GX expectation or a pandas computation, and what it needs to run."""

    name: str
    column: str | None
    needs: tuple[str, ...]  # columns that must exist with a compatible dtype for the check to run
    expectation: Callable[[], Expectation] | None = None  # a GX check ...
    explain: Explain | None = None
    compute: Compute | None = None  # ... or a pandas one
    # Returns a reason when the check does not apply to this frame (it then passes).
    not_applicable: Callable[[pd.DataFrame], str | None] | None = None


def plain(value: Any) -> Any:
    """A JSON-able, readable version of a value from a frame or a GX result."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
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
    for value in (plain(v) for v in values):
        if value not in seen:
            seen.append(value)
        if len(seen) == EXAMPLES:
            break
    return seen


def explain_rows(problem: str, *, by_index: bool = False) -> Explain:
    """Explain a failed GX column-map expectation: '<n> of <rows> rows <problem>; e.g. ...'."""

    def explain(result: dict[str, Any], rows: int) -> tuple[int, Any, str]:
        count = int(result.get("unexpected_count") or 0)
        if by_index:  # the values themselves (nulls) say nothing; show where they are
            where = _examples(result.get("partial_unexpected_index_list") or [])
            return count, where, f"{count} of {rows} rows {problem} (row index {where})"
        examples = _examples(result.get("partial_unexpected_list") or [])
        return count, examples, f"{count} of {rows} rows {problem}; e.g. {examples}"

    return explain


def explain_observed(problem: str) -> Explain:
    """Explain a failed GX aggregate expectation: '<problem> (observed <value>)'."""

    def explain(result: dict[str, Any], rows: int) -> tuple[int, Any, str]:
        observed = plain(result.get("observed_value"))
        return 0, observed, f"{problem} (observed {observed})"

    return explain


def _columns_explain(table: str) -> Explain:
    def explain(result: dict[str, Any], rows: int) -> tuple[int, Any, str]:
        mismatched = (result.get("details") or {}).get("mismatched") or {}
        missing, extra = mismatched.get("missing") or [], mismatched.get("unexpected") or []
        parts = [f"missing column(s) {sorted(missing)}"] if missing else []
        parts += [f"unexpected column(s) {sorted(extra)}"] if extra else []
        found = plain(result.get("observed_value"))
        return 0, found, f"{table}: {' and '.join(parts)}; found {found}"

    return explain


def not_empty(table: str) -> Check:
    return Check(
        f"{table} not empty",
        None,
        (),
        expectation=lambda: gxe().ExpectTableRowCountToBeBetween(min_value=1),
        explain=explain_observed(f"{table} has no rows"),
    )


def has_columns(table: str, names: Sequence[str], *, exact: bool) -> Check:
    return Check(
        f"{table} columns",
        None,
        (),
        expectation=lambda: gxe().ExpectTableColumnsToMatchSet(
            column_set=list(names), exact_match=exact
        ),
        explain=_columns_explain(table),
    )


def not_null(table: str, column: str) -> Check:
    return Check(
        f"{table}.{column} not null",
        column,
        (column,),
        expectation=lambda: gxe().ExpectColumnValuesToNotBeNull(column=column),
        explain=explain_rows(f"have a null {table}.{column}", by_index=True),
    )


def is_unique(table: str, column: str) -> Check:
    return Check(
        f"{table}.{column} unique",
        column,
        (column,),
        expectation=lambda: gxe().ExpectColumnValuesToBeUnique(column=column),
        explain=explain_rows(f"share their {table}.{column} with another row"),
    )


def compound_unique(name: str, table: str, columns: tuple[str, ...]) -> Check:
    return Check(
        name,
        None,
        columns,
        expectation=lambda: gxe().ExpectCompoundColumnsToBeUnique(column_list=list(columns)),
        explain=explain_rows(f"share their ({', '.join(columns)}) with another row"),
    )


def between(table: str, column: str, low: Any, high: Any) -> Check:
    return Check(
        f"{table}.{column} in range",
        column,
        (column,),
        expectation=lambda: gxe().ExpectColumnValuesToBeBetween(
            column=column, min_value=low, max_value=high
        ),
        explain=explain_rows(f"have {table}.{column} outside [{low}, {high}]"),
    )


# --- dtypes ----------------------------------------------------------------------------------


def kind_of(expected: pa.DataType) -> str:
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


def dtype_problem(series: pd.Series, kind: str) -> str | None:
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


def dtype_check(table: str, column: str, kind: str) -> Check:
    def compute(frame: pd.DataFrame) -> tuple[bool, int, Any, str]:
        if column not in frame.columns:
            return False, 0, None, f"{table}.{column} is missing"
        problem = dtype_problem(frame[column], kind)
        dtype = str(frame[column].dtype)
        if problem is None:
            return True, 0, dtype, f"{table}.{column} has dtype {dtype} ({kind})"
        return False, 0, dtype, f"{table}.{column} {problem}"

    return Check(f"{table}.{column} type", column, (), compute=compute)


def schema_checks(table: str, schema: pa.Schema) -> list[Check]:
    return [has_columns(table, schema.names, exact=True)] + [
        dtype_check(table, field.name, kind_of(field.type)) for field in schema
    ]


@functools.cache
def quiet_gx() -> None:
    """Import GX (about 5 s, so only when a check runs) and silence its logging.

    GX logs at INFO during a run (each ephemeral context announces a temporary docs directory),
    and one of its modules sets its own logger to INFO on import, so this runs after the import.
    A check's outcome is the report, not the log. The "Calculating Metrics" progress bars are
    turned off per context, in :func:`recsys.validation.suite.run_gx`.
    """
    import great_expectations  # noqa: F401

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)


def gxe() -> Any:
    quiet_gx()
    import great_expectations.expectations as gxe

    return gxe


def known_ids(column: str, known: np.ndarray, what: str) -> Check:
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

    return Check(f"interactions.{column} known", column, (column,), compute=compute)


def top_user_share(max_share: float) -> Check:
    def compute(frame: pd.DataFrame) -> tuple[bool, int, Any, str]:
        counts = frame["user_id"].value_counts()
        top, events = plain(counts.index[0]), int(counts.iloc[0])
        share = events / len(frame)
        sentence = f"user {top} has {events} of {len(frame)} events ({share:.1%})"
        if share <= max_share:
            return True, 0, round(share, 4), f"the most active {sentence}"
        return False, events, round(share, 4), f"{sentence}, more than {max_share:.0%}"

    return Check(
        "interactions.user_id top share",
        "user_id",
        ("user_id",),
        compute=compute,
        # A share bound describes a population: with a handful of users (a test fixture, a
        # first day of data) one user holding most events is normal.
        not_applicable=lambda f: (
            None
            if f["user_id"].nunique() >= SHARE_MIN_USERS
            else f"fewer than {SHARE_MIN_USERS} users"
        ),
    )
