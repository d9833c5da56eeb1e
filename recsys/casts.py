"""Safe casts on load: which stored types become the canonical ones, and which values block it.

Data written by other tools rarely has the canonical types exactly. pandas stores an integer
column that has nulls as double, timestamps in nanoseconds, naive or in a local zone, and text
as large_string; pyarrow keeps int32 or dictionary-encoded columns as they are. A cast is *safe*
when no value changes, and then it is applied and reported (a :class:`Cast`, also logged at
INFO). A cast that would change a value is *unsafe*, and the file is rejected: doubles that are
not whole numbers where an integer is expected, integers too large for the canonical type,
timestamps finer than a microsecond (stored timestamps are microseconds: Feast and Arrow
conversions downstream handle nothing finer). Types no cast can bridge (text where a number
is expected, a list of numbers where a list of text is expected) are never cast: a dataset
folder is rejected, and an incoming batch keeps the column as stored for its type check.

This module decides (:func:`rule`) and checks the values (:func:`scan_values`, streaming
through the file a column batch at a time, so it scales with the file).
:func:`recsys.validation.folder.check_casts` puts it to work for both load paths, a dataset folder and an
incoming batch, and turns a finding into an error naming the file, the column and example rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
INT64_LIMIT = 2**63  # int64 holds [-2**63, 2**63)
EXACT_DOUBLE = 2**53  # a double holds every integer up to this magnitude, and not all beyond
SCAN_BATCH = 256 * 1024  # rows per value-check batch: a few MB per column


@dataclass(frozen=True)
class Cast:
    """One applied cast: a column of a file converted to its canonical type, values unchanged."""

    table: str
    column: str
    from_type: str  # the stored Arrow type, e.g. "double", "timestamp[ns, tz=Europe/Paris]"
    to_type: str  # the canonical Arrow type, e.g. "int64", "timestamp[us, tz=UTC]"
    rows: int  # rows in the file
    note: str  # how the values were read, e.g. "naive timestamps read as UTC"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A value check: stored values in, a boolean mask of the values the cast would change (or
# could not hold) out; nulls are never flagged (a null stays a null, and a required column's
# nulls are reported by their own check).
ValueCheck = Callable[[pa.Array], np.ndarray]


@dataclass(frozen=True)
class Rule:
    """How a stored type becomes a canonical one."""

    note: str
    unsafe: str | None = None  # the values that block the cast, e.g. "values that are not ..."
    check: ValueCheck | None = None
    fix: str = ""  # how to fix the offending values (said in the error)


@dataclass
class Finding:
    """Offending values of one column: how many, and the first few (row number, value)."""

    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)  # 0-based row, value as text


def _filled(values: pa.Array, fill: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(values, fill).to_numpy(zero_copy_only=False))


def _valid(values: pa.Array) -> np.ndarray:
    return np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _not_whole(values: pa.Array) -> np.ndarray:
    x = _filled(values.cast(pa.float64()), 0.0)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (np.floor(x) == x) & (x >= -INT64_LIMIT) & (x < INT64_LIMIT)
    return _valid(values) & ~whole


def _above_int64(values: pa.Array) -> np.ndarray:
    return _filled(values, 0) >= np.uint64(INT64_LIMIT)


def _inexact_in_double(values: pa.Array) -> np.ndarray:
    x = _filled(values, 0)
    return (x > EXACT_DOUBLE) | (x < -EXACT_DOUBLE)


def _sub_microsecond(values: pa.Array) -> np.ndarray:
    return (_filled(values.cast(pa.int64()), 0) % 1000) != 0


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def rule(expected: pa.DataType, stored: pa.DataType) -> Rule | None:
    """How ``stored`` becomes ``expected``; None when no cast can (the file is rejected)."""
    if stored == expected:
        return Rule("same type")
    if pa.types.is_null(stored):  # pyarrow's type for a column of nulls only
        return Rule("every value is null")
    if pa.types.is_integer(expected):
        return _to_integer(stored)
    if pa.types.is_floating(expected):
        if pa.types.is_floating(stored):
            return Rule("floats widened")
        if pa.types.is_integer(stored):
            if stored.bit_width < 64:
                return Rule("integers as doubles")
            return Rule(
                "integers as doubles",
                "integers beyond ±2**53 (a double cannot hold them exactly)",
                _inexact_in_double,
                "store the values as doubles if that rounding is acceptable",
            )
        return None
    if pa.types.is_string(expected):
        return Rule("text re-encoded") if _is_text(stored) else None
    if pa.types.is_timestamp(expected):
        return _to_timestamp(stored)
    if pa.types.is_list(expected):
        listed = pa.types.is_list(stored) or pa.types.is_large_list(stored)
        return Rule("lists of text re-encoded") if listed and _is_text(stored.value_type) else None
    raise TypeError(f"no cast rule for canonical type {expected}")


def _to_integer(stored: pa.DataType) -> Rule | None:
    if pa.types.is_boolean(stored):
        return None  # pyarrow would make 0/1 of it: never what an id or an age means
    if pa.types.is_integer(stored):
        if stored == pa.uint64():
            return Rule(
                "unsigned integers as int64",
                "values above the int64 maximum (2**63 - 1)",
                _above_int64,
                "ids and counts must fit in int64",
            )
        return Rule("integers widened")
    if pa.types.is_floating(stored):
        return Rule(
            "whole numbers as integers (pandas stores an integer column with nulls as double)",
            "values that are not whole numbers in the int64 range",
            _not_whole,
            "store integers (pandas: .astype('Int64')) or fix the values",
        )
    return None


def _to_timestamp(stored: pa.DataType) -> Rule | None:
    if pa.types.is_timestamp(stored):
        zone = stored.tz
        if zone is None:
            note = "naive timestamps read as UTC"
        elif zone.upper() in ("UTC", "+00:00", "Z", "ETC/UTC"):
            note = "UTC timestamps"
        else:
            note = f"timestamps in {zone} converted to UTC (same instants)"
        if stored.unit != "ns":
            return Rule(f"{note}, {stored.unit} to us")
        return Rule(
            f"{note}, ns to us (every value a whole microsecond)",
            "values finer than a microsecond",
            _sub_microsecond,
            "timestamps are stored in microseconds: round them first (pandas: .dt.floor('us'))",
        )
    if pa.types.is_date(stored):
        return Rule("dates read as midnight UTC")
    if _is_text(stored):
        # The values are parsed by DuckDB; recsys.validation.folder.check_casts checks every one parses.
        return Rule("ISO-8601 text parsed (text without an offset read as UTC)")
    return None


def scan_values(path: Path, checks: dict[str, ValueCheck], examples: int) -> dict[str, Finding]:
    """Run each column's value check over the whole file, streaming; findings by column."""
    found = {column: Finding() for column in checks}
    if not checks:
        return found
    start = 0
    reader = pq.ParquetFile(path)
    for batch in reader.iter_batches(batch_size=SCAN_BATCH, columns=list(checks)):
        for column, check in checks.items():
            values = batch.column(column)
            if isinstance(values, pa.DictionaryArray):
                values = values.dictionary_decode()
            bad = np.flatnonzero(check(values))
            finding = found[column]
            finding.count += len(bad)
            for index in bad[: max(0, examples - len(finding.examples))]:
                finding.examples.append((start + int(index), str(values[int(index)])))
        start += batch.num_rows
    return found


def log_casts(casts: list[Cast], path: Path) -> None:
    for cast in casts:
        log.info(
            "%s: column '%s' cast from %s to %s (%d rows; %s)",
            path, cast.column, cast.from_type, cast.to_type, cast.rows, cast.note,
        )  # fmt: skip
