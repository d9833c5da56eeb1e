"""Safe casts on load: data as pandas and other tools write it loads, each cast reported; casts
that would change a value are rejected naming the file, the column and example rows.

Both load paths run every case: a dataset folder (``normalize_dataset``) and an incoming batch
(``read_batch``). The files are tiny and written here with pandas or pyarrow, so each one holds
exactly the type under test (parquet keeps the Arrow types; the tests check that too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.ingest import ingest
from recsys.io import read_json
from recsys.schema import INTERACTIONS, TABLES, DatasetValidationError
from recsys.settings import Settings
from recsys.validation.folder import normalize_dataset
from recsys.validation.tables import read_batch, validate_interactions
from tests.conftest import event, item, ts, user

T0, T1, T2 = "2024-01-01 10:00:00", "2024-02-01 12:00:00", "2024-03-15 08:30:00"
EVENTS = [event(1, 10, T0, 5.0), event(2, 11, T1, 3.0), event(3, 12, T2, None)]
USERS, ITEMS = [user(u) for u in (1, 2, 3)], [item(i) for i in (10, 11, 12)]


def interactions(**columns: Any) -> pd.DataFrame:
    """The canonical events as pandas holds them, with ``columns`` replaced."""
    frame = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": [10, 11, 12],
            "rating": [5.0, 3.0, None],
            "event_timestamp": pd.to_datetime([T0, T1, T2]).tz_localize("UTC").as_unit("us"),
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def via_dataset(file: Path, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """Load an interactions file as part of a dataset folder: (rows, casts of interactions)."""
    for name, rows in (("users", USERS), ("items", ITEMS)):
        table = pa.Table.from_pylist(rows, schema=TABLES[name])
        pq.write_table(table, file.parent / f"{name}.parquet")
    out = tmp_path / "out"
    out.mkdir()
    summary = normalize_dataset(file.parent, out)
    table = pq.read_table(out / "interactions.parquet")
    assert table.schema == INTERACTIONS
    return table.to_pylist(), [c for c in summary.casts if c["table"] == "interactions"]


def via_batch(file: Path, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """Load an interactions file as an incoming batch: (rows, casts)."""
    frame = read_batch(file)
    assert dict(frame.dtypes.astype(str)) == {
        "user_id": "int64",
        "item_id": "int64",
        "rating": "float64",
        "event_timestamp": "datetime64[us, UTC]",
    }
    casts = frame.attrs["casts"]
    json.dumps(casts)  # the batch report stores them as JSON
    rows = pa.Table.from_pandas(frame, schema=INTERACTIONS, preserve_index=False).to_pylist()
    return rows, casts


LOADERS = {"dataset": via_dataset, "batch": via_batch}
Loader = Callable[[Path, Path], tuple[list[dict], list[dict]]]


@pytest.fixture(params=list(LOADERS))
def load(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Path], Any]:
    return lambda file: LOADERS[request.param](file, tmp_path)


def written(tmp_path: Path, data: pd.DataFrame | pa.Table) -> Path:
    path = tmp_path / "src" / "interactions.parquet"  # a dataset folder's file, or a batch
    path.parent.mkdir(exist_ok=True)
    if isinstance(data, pd.DataFrame):
        data.to_parquet(path)  # the way pandas users write files
    else:
        pq.write_table(data, path)
    return path


def casts_by_column(casts: list[dict]) -> dict[str, tuple[str, str]]:
    return {c["column"]: (c["from_type"], c["to_type"]) for c in casts}


def test_canonical_file_needs_no_cast(load, tmp_path):
    rows, casts = load(written(tmp_path, pa.Table.from_pylist(EVENTS, schema=INTERACTIONS)))
    assert rows == EVENTS and casts == []


# --- Safe casts: applied, values unchanged, reported ------------------------------------------


@pytest.mark.parametrize(
    ("column", "stored", "from_type", "note"),
    [
        # pandas makes an integer column with a null (here: once there was one) double.
        ("user_id", [1.0, 2.0, 3.0], "double", "whole"),
        ("item_id", np.array([10, 11, 12], dtype=np.int32), "int32", "widened"),
        ("item_id", np.array([10, 11, 12], dtype=np.uint64), "uint64", "int64"),
        ("rating", np.array([5, 3, 4], dtype=np.int64), "int64", "doubles"),
        ("rating", np.array([5.0, 3.0, np.nan], dtype=np.float32), "float", "widened"),
    ],
    ids=["double-id", "int32-id", "uint64-id", "int-rating", "float32-rating"],
)
def test_numbers_are_cast_when_no_value_changes(load, tmp_path, column, stored, from_type, note):
    file = written(tmp_path, interactions(**{column: stored}))
    assert str(pq.read_schema(file).field(column).type) == from_type
    rows, casts = load(file)
    expected = [dict(e) for e in EVENTS]
    if column == "rating":  # these inputs hold other ratings than EVENTS
        for row, value in zip(expected, stored, strict=True):
            row["rating"] = None if np.isnan(value) else float(value)
    assert rows == expected
    assert casts_by_column(casts) == {column: (from_type, str(INTERACTIONS.field(column).type))}
    assert note in casts[0]["note"] and casts[0]["rows"] == 3


@pytest.mark.parametrize(
    ("stamps", "from_type", "note"),
    [
        (pd.to_datetime([T0, T1, T2]), "timestamp[ns]", "naive timestamps read as UTC"),
        (pd.to_datetime([T0, T1, T2]).tz_localize("UTC"), "timestamp[ns, tz=UTC]", "ns to us"),
        # The same instants written as local times: stored UTC instants, shown in Paris time.
        (
            pd.to_datetime([T0, T1, T2]).tz_localize("UTC").tz_convert("Europe/Paris"),
            "timestamp[ns, tz=Europe/Paris]",
            "Europe/Paris converted to UTC",
        ),
        (pd.to_datetime([T0, T1, T2]).as_unit("ms"), "timestamp[ms]", "ms to us"),
    ],
    ids=["naive-ns", "utc-ns", "paris-ns", "naive-ms"],
)
def test_timestamps_are_cast_to_utc_microseconds(load, tmp_path, stamps, from_type, note):
    file = written(tmp_path, interactions(event_timestamp=stamps))
    assert str(pq.read_schema(file).field("event_timestamp").type) == from_type
    rows, casts = load(file)
    assert rows == EVENTS
    assert casts_by_column(casts) == {"event_timestamp": (from_type, "timestamp[us, tz=UTC]")}
    assert note in casts[0]["note"]


def test_whole_microseconds_in_nanoseconds_are_kept_exactly(load, tmp_path):
    stamps = pd.to_datetime([T0, T1, T2]) + pd.to_timedelta([123_456_000, 1_000, 0], unit="ns")
    rows, casts = load(written(tmp_path, interactions(event_timestamp=stamps)))
    by_user = {r["user_id"]: r["event_timestamp"] for r in rows}
    assert by_user == {
        1: ts(T0) + timedelta(microseconds=123_456),
        2: ts(T1) + timedelta(microseconds=1),
        3: ts(T2),
    }
    assert [c["column"] for c in casts] == ["event_timestamp"]


def test_casts_are_logged(load, tmp_path, caplog):
    naive = pd.to_datetime([T0, T1, T2])
    file = written(tmp_path, interactions(user_id=[1.0, 2.0, 3.0], event_timestamp=naive))
    with caplog.at_level(logging.INFO, logger="recsys.casts"):
        load(file)
    lines = [r.getMessage() for r in caplog.records if r.name == "recsys.casts"]
    assert len(lines) == 2, lines
    assert all(str(file) in line for line in lines)
    assert "'user_id' cast from double to int64" in lines[0]
    assert "'event_timestamp' cast from timestamp[ns] to timestamp[us, tz=UTC]" in lines[1]


# --- Unsafe casts: rejected with the file, the column and example rows ------------------------


def rejection(load: Callable[[Path], Any], file: Path, column: str) -> tuple[str, list[str]]:
    """Load ``file``, expecting a rejection naming it and ``column``: (problem, example rows)."""
    with pytest.raises(DatasetValidationError) as info:
        load(file)
    message = str(info.value)
    head, marker, table = message.partition("example rows")
    assert head.startswith(f"{file}: column '{column}' "), message
    assert marker, f"no example rows in: {message}"
    lines = [line for line in table.splitlines()[1:] if line.strip()]
    assert lines[0].split()[-1] == "row", message  # the header: the file's columns, then row
    return head, lines[1:]


def shown_rows(lines: list[str]) -> list[int]:
    return [int(line.split()[-1]) for line in lines]


@pytest.mark.parametrize(
    ("column", "values", "bad_rows", "problem", "shown"),
    [
        ("user_id", [1.0, 2.5, 3.0], [1], "not whole numbers", "2.5"),
        ("item_id", [10.0, np.inf, 1e19], [1, 2], "not whole numbers in the int64 range", "1e+19"),
        ("item_id", np.array([10, 2**64 - 1, 12], np.uint64), [1], "above the int64 maximum",
         "18446744073709551615"),
        ("rating", np.array([5, 2**60, 4], np.int64), [1], "beyond ±2**53", str(2**60)),
        (
            "event_timestamp",
            pd.to_datetime([T0, T1, T2]) + pd.to_timedelta([1, 0, 999_999], unit="ns"),
            [0, 2],
            "finer than a microsecond",
            "2024-03-15 08:30:00.000999999",
        ),
        (
            "event_timestamp",
            (pd.to_datetime([T0, T1, T2]) + pd.to_timedelta([0, 1_500, 0], unit="ns"))
            .tz_localize("UTC")
            .tz_convert("America/New_York"),
            [1],
            "finer than a microsecond",
            "2024-02-01 07:00:00.000001500-05:00",
        ),
    ],
    ids=["fraction-id", "huge-id", "uint64-id", "huge-int-rating", "sub-us-naive", "sub-us-zoned"],
)  # fmt: skip
def test_unsafe_value_casts_are_rejected(load, tmp_path, column, values, bad_rows, problem, shown):
    file = written(tmp_path, interactions(**{column: values}))
    stored = pq.read_schema(file).field(column).type
    head, lines = rejection(load, file, column)
    assert f"has type {stored}, expected {INTERACTIONS.field(column).type}" in head
    assert f"{len(bad_rows)} of 3 rows hold" in head and problem in head
    # The offending values exactly as stored (the table below may show them rounded).
    assert f"row {bad_rows[-1]}: {shown}" in head, head
    assert shown_rows(lines) == bad_rows


INCOMPATIBLE = [
    ("user_id", ["1", "2", "u3"], "string"),
    ("item_id", [True, False, True], "bool"),
    ("rating", ["5", "3", "good"], "string"),
    ("event_timestamp", [1704103200, 1706788800, 1710491400], "int64"),
]


@pytest.mark.parametrize(("column", "values", "stored"), INCOMPATIBLE)
def test_incompatible_types_are_rejected_in_a_dataset(tmp_path, column, values, stored):
    file = written(tmp_path, interactions(**{column: values}))
    head, lines = rejection(lambda f: via_dataset(f, tmp_path), file, column)
    assert f"has type {stored}, expected {INTERACTIONS.field(column).type}" in head
    assert shown_rows(lines) == [0, 1, 2]  # no value fits: the first rows show what is there


@pytest.mark.parametrize(("column", "values", "stored"), INCOMPATIBLE)
def test_incompatible_types_fail_the_type_check_of_a_batch(tmp_path, column, values, stored):
    # No cast applies: the column is kept as stored, and the batch's type check reports it
    # along with every other check (a batch report shows all its problems at once).
    frame = read_batch(written(tmp_path, interactions(**{column: values})))
    assert frame[column].tolist() == values
    assert [c["column"] for c in frame.attrs["casts"]] == []
    failed = {o.name: o.detail for o in validate_interactions(frame).failed}
    detail = failed.pop(f"interactions.{column} type")
    assert f"has dtype {frame[column].dtype}" in detail and str(values[-1]) in detail, detail
    # The checks that need the column say so; nothing else fails.
    assert all(detail.startswith("skipped:") for detail in failed.values()), failed


def test_batch_with_a_null_id_stored_as_double_fails_its_null_check(tmp_path):
    # The cast ignores nulls; that an id may not be null is the null check's to say.
    file = written(tmp_path, interactions(user_id=[1.0, None, 3.0]))
    frame = read_batch(file)
    assert frame.attrs["casts"][0]["column"] == "user_id"
    failed = [o.name for o in validate_interactions(frame).failed]
    assert failed == ["interactions.user_id not null"]


def test_dataset_with_a_null_id_stored_as_double_fails_its_null_check(tmp_path):
    file = written(tmp_path, interactions(user_id=[1.0, None, 3.0]))
    with pytest.raises(DatasetValidationError, match="'user_id' has null values"):
        via_dataset(file, tmp_path)


def test_unsafe_cast_in_a_later_batch_shows_rows_of_that_batch(tmp_path):
    # Row numbers count across the file's row groups and scan batches.
    frame = pd.concat([interactions()] * 100_000, ignore_index=True)
    frame["user_id"] = frame["user_id"].astype(float)
    frame.loc[[5, 290_003], "user_id"] = 0.5
    path = tmp_path / "interactions.parquet"
    frame.to_parquet(path, row_group_size=70_000)
    with pytest.raises(DatasetValidationError) as info:
        read_batch(path)
    message = str(info.value)
    assert "2 of 300000 rows" in message and "row 5: 0.5; row 290003: 0.5" in message


# --- A dataset folder written the naive pandas way ingests ------------------------------------


def test_dataset_written_the_pandas_way_ingests(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "age": [34, None, 51],  # unknown age: pandas makes the column double
            "gender": ["F", "M", "F"],
            "occupation": ["writer", "engineer", "artist"],
            "zip_code": ["10001", "10002", "10003"],
        }
    ).to_parquet(folder / "users.parquet")
    pd.DataFrame(
        {
            "item_id": [10, 11, 12],
            "title": ["Casablanca", "Airplane", "Vertigo"],
            "release_year": [1942, None, 1958],
            "genres": [["Drama"], ["Comedy"], ["Drama", "Thriller"]],
        }
    ).to_parquet(folder / "items.parquet")
    events = interactions(event_timestamp=pd.to_datetime([T0, T1, T2]))  # naive, ns
    # A filtered frame: pandas saves its index as a column.
    events.iloc[[2, 0, 1]].to_parquet(folder / "interactions.parquet")

    summary = ingest(Settings(data_dir=tmp_path / "data", dataset=str(folder)))
    expected = {
        ("users", "age"): ("double", "int64"),
        ("items", "release_year"): ("double", "int64"),
        ("interactions", "event_timestamp"): ("timestamp[ns]", "timestamp[us, tz=UTC]"),
    }
    got = {(c["table"], c["column"]): (c["from_type"], c["to_type"]) for c in summary.casts}
    assert got == expected
    dataset = tmp_path / "data" / "dataset"
    assert read_json(dataset / "manifest.json")["casts"] == summary.casts
    for name, schema in TABLES.items():
        assert pq.read_schema(dataset / f"{name}.parquet") == schema, name
    users = pq.read_table(dataset / "users.parquet").to_pylist()
    assert [u["age"] for u in users] == [34, None, 51]
    assert pq.read_table(dataset / "interactions.parquet").to_pylist() == EVENTS


def test_text_timestamps_are_parsed_as_in_a_dataset(load, tmp_path):
    # ISO 8601: naive text is UTC, an offset is applied, "Z" is UTC; the same instants as EVENTS.
    text = ["2024-01-01 10:00:00", "2024-02-01T14:00:00+02:00", "2024-03-15T08:30:00Z"]
    rows, casts = load(written(tmp_path, interactions(event_timestamp=text)))
    assert rows == EVENTS
    assert casts_by_column(casts) == {"event_timestamp": ("string", "timestamp[us, tz=UTC]")}


def test_unparseable_text_timestamp_is_rejected(load, tmp_path):
    file = written(tmp_path, interactions(event_timestamp=[T0, "last tuesday", T2]))
    head, lines = rejection(load, file, "event_timestamp")
    assert "not parseable" in head and shown_rows(lines) == [1] and "last tuesday" in lines[0]


def test_column_of_nulls_only(load, tmp_path):
    # pandas writes an all-None object column with Arrow's null type.
    file = written(tmp_path, interactions(rating=[None, None, None]))
    assert pq.read_schema(file).field("rating").type == pa.null()
    rows, casts = load(file)
    assert rows == [{**e, "rating": None} for e in EVENTS]
    assert casts_by_column(casts) == {"rating": ("null", "double")}


def test_dates_mean_midnight_utc(load, tmp_path):
    days = pd.to_datetime([T0, T1, T2]).date  # datetime.date objects: Arrow's date32
    file = written(tmp_path, interactions(event_timestamp=days))
    rows, casts = load(file)
    assert [r["event_timestamp"] for r in rows] == [ts(f"{day} 00:00:00") for day in days]
    assert casts_by_column(casts) == {"event_timestamp": ("date32[day]", "timestamp[us, tz=UTC]")}
