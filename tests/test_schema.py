"""Schema tests: bad dataset folders fail with an error that names the file, the column and
example rows, compatible types are normalised to the exact canonical types, and a failed
ingest leaves nothing partial in the data folder.

Every bad folder is the good fixture below with one file rewritten with explicit Arrow types,
so each test isolates one problem. The offending rows carry values that appear nowhere else
(a timestamp, a title, an occupation), so finding them in the message proves the message shows
the offending rows and not just any rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestration import cli
from recsys.features.ops import EPOCH
from recsys.ingest import ingest
from recsys.schema import TABLES, DatasetValidationError
from recsys.validation.folder import normalize_dataset, validate_dataset
from tests.conftest import event, item, ts, user, write_dataset

T0, T1, T2 = "2024-01-01 10:00:00", "2024-02-01 12:00:00", "2024-03-15 08:30:00"
# Distinct values per row: each one identifies its row in an error message.
USERS = [
    user(1, occupation="writer"),
    user(2, occupation="engineer"),
    user(3, occupation="artist"),
]
ITEMS = [
    {**item(10, ["Drama"]), "title": "Casablanca"},
    {**item(11, ["Comedy"], year=None), "title": "Airplane"},
    {**item(12, ["Drama", "Comedy"]), "title": "Vertigo"},
]
EVENTS = [event(1, 10, T0, 5.0), event(2, 11, T1, 3.0), event(3, 12, T2, 1.5)]
ROWS = {"users": USERS, "items": ITEMS, "interactions": EVENTS}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "good", USERS, ITEMS, EVENTS)


@pytest.fixture
def variant(good: Path, tmp_path: Path) -> Callable[..., Path]:
    """A copy of the good folder with one file replaced by ``table`` (or removed / garbage)."""

    def make(name: str, table: pa.Table | bytes | None) -> Path:
        folder = write_dataset(tmp_path / "bad", USERS, ITEMS, EVENTS)
        path = folder / f"{name}.parquet"
        if table is None:
            path.unlink()
        elif isinstance(table, bytes):
            path.write_bytes(table)
        else:
            pq.write_table(table, path)
        return folder

    return make


def canonical(name: str) -> pa.Table:
    """The fixture's table as normalised: users and items valid from the epoch."""
    rows = (
        ROWS[name] if name == "interactions" else [{**r, "valid_from": EPOCH} for r in ROWS[name]]
    )
    return pa.Table.from_pylist(rows, schema=TABLES[name])


def with_column(name: str, column: str, values: pa.Array) -> pa.Table:
    """The good ``name`` table with ``column`` replaced (keeps the column order)."""
    table = canonical(name)
    return table.set_column(table.schema.get_field_index(column), column, values)


def failure(folder: Path) -> DatasetValidationError:
    with pytest.raises(DatasetValidationError) as info:
        validate_dataset(folder)
    return info.value


def example_rows(error: DatasetValidationError, path: Path, column: str) -> list[str]:
    """Check the message names ``path`` and ``column``; return its example rows (no header)."""
    message = str(error)
    head, marker, rows = message.partition("example rows")
    assert str(path) in head, message
    assert f"'{column}'" in head, message
    assert marker, f"no example rows in: {message}"
    lines = [line for line in rows.splitlines()[1:] if line.strip()]
    assert lines[0].split()[-1] == "row", message  # the header: the file's columns, then row
    return lines[1:]


# --- Missing columns, wrong types ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "column", "shown"),
    [
        ("interactions", "rating", T2),
        ("interactions", "event_timestamp", "1.5"),
        ("users", "zip_code", "artist"),
        ("items", "genres", "Vertigo"),
    ],
)
def test_missing_column(variant, name, column, shown):
    folder = variant(name, canonical(name).drop_columns([column]))
    error = failure(folder)
    head = str(error).partition("example rows")[0]
    # The missing column is named as missing, not just listed among the expected ones.
    assert f"missing column(s) ['{column}']" in head
    rows = example_rows(error, folder / f"{name}.parquet", column)
    # The rows show what the file holds instead, so a renamed column is easy to spot.
    assert any(shown in line for line in rows), error


@pytest.mark.parametrize(
    ("name", "column", "values", "shown"),
    [
        ("users", "user_id", pa.array(["1", "2", "user-3"]), "user-3"),
        ("interactions", "user_id", pa.array(["1", "2", "user-3"]), "user-3"),
        ("items", "item_id", pa.array([10.0, 11.0, 12.5]), "12.5"),
        ("items", "genres", pa.array(["Drama", "Comedy", "Drama|Comedy"]), "Drama|Comedy"),
        ("items", "genres", pa.array([[1], [2], [37]], pa.list_(pa.int64())), "[37]"),
        ("interactions", "rating", pa.array(["5.0", "3.0", "three"]), "three"),
        ("users", "age", pa.array([30.0, 31.0, 32.5]), "32.5"),
        ("interactions", "event_timestamp", pa.array([1, 2, 1710491400], pa.int64()), "1710491400"),
    ],
)
def test_wrong_type(variant, name, column, values, shown):
    folder = variant(name, with_column(name, column, values))
    error = failure(folder)
    # The message says which type the file holds, so the fix is obvious.
    stored = pq.read_schema(folder / f"{name}.parquet").field(column).type
    assert f"has type {stored}" in str(error)
    rows = example_rows(error, folder / f"{name}.parquet", column)
    assert any(shown in line for line in rows), error


# --- Null ids, unparseable timestamps --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "column", "values", "shown"),
    [
        ("users", "user_id", pa.array([1, 2, None], pa.int64()), "artist"),
        ("items", "item_id", pa.array([10, 11, None], pa.int64()), "Vertigo"),
        ("interactions", "user_id", pa.array([1, 2, None], pa.int64()), T2),
        ("interactions", "item_id", pa.array([10, 11, None], pa.int64()), T2),
        ("interactions", "event_timestamp", pa.array([ts(T0), ts(T1), None]), "1.5"),
        # Null in a string timestamp column: null, not "unparseable".
        ("interactions", "event_timestamp", pa.array([T0, T1, None]), "1.5"),
    ],
)
def test_null_ids(variant, name, column, values, shown):
    folder = variant(name, with_column(name, column, values))
    error = failure(folder)
    assert "null" in str(error)
    rows = example_rows(error, folder / f"{name}.parquet", column)
    # Exactly the offending row: the others are valid and would only hide it.
    assert len(rows) == 1 and shown in rows[0], error


@pytest.mark.parametrize(
    "bad",
    # DuckDB casts 'infinity' to a timestamp; it is no event time (and overflows Arrow).
    ["not-a-time", "2024-13-01 00:00:00", "", "yesterday", "infinity", "-infinity"],
)
def test_unparseable_timestamp(variant, bad):
    values = pa.array([T0, bad, "2024-03-15T08:30:00+00:00"])
    folder = variant("interactions", with_column("interactions", "event_timestamp", values))
    error = failure(folder)
    assert "parseable" in str(error)
    rows = example_rows(error, folder / "interactions.parquet", "event_timestamp")
    assert len(rows) == 1, error
    # The bad value itself is shown (the empty string is identified by its row, 1).
    assert bad in rows[0] and rows[0].split()[-1] == "1", error


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63) + 1])
def test_infinite_native_timestamp(variant, value):
    # int64 max / min + 1 microseconds are DuckDB's +/- infinity: no event time either.
    values = pa.array([0, value, 0], pa.timestamp("us", tz="UTC"))
    folder = variant("interactions", with_column("interactions", "event_timestamp", values))
    rows = example_rows(failure(folder), folder / "interactions.parquet", "event_timestamp")
    assert len(rows) == 1 and rows[0].split()[-1] == "1", rows


@pytest.mark.parametrize(
    "encode",
    [
        lambda v: pa.array(v, pa.string()),
        lambda v: pa.array(v, pa.large_string()),  # pandas' pyarrow-backed strings
        lambda v: pa.array(v).dictionary_encode(),
    ],
    ids=["string", "large_string", "dictionary"],
)
def test_iso_timestamp_strings_are_normalised_to_utc(variant, tmp_path, encode):
    # Naive text is UTC; an offset is applied; "Z" is UTC. All three are the same instants
    # as EVENTS, so a wrong timezone rule gives different values.
    text = ["2024-01-01 10:00:00", "2024-02-01T14:00:00+02:00", "2024-03-15T08:30:00Z"]
    folder = variant("interactions", with_column("interactions", "event_timestamp", encode(text)))
    out = tmp_path / "out"
    out.mkdir()
    normalize_dataset(folder, out)
    table = pq.read_table(out / "interactions.parquet")
    assert table.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    got = {(r["user_id"], r["item_id"]): r["event_timestamp"] for r in table.to_pylist()}
    assert got == {(1, 10): ts(T0), (2, 11): ts(T1), (3, 12): ts(T2)}


# --- Files, keys, references, ratings --------------------------------------------------------


@pytest.mark.parametrize("name", list(TABLES))
def test_missing_file(variant, name):
    folder = variant(name, None)
    message = str(failure(folder))
    assert str(folder / f"{name}.parquet") in message and "missing" in message
    # The message says what a dataset folder must hold.
    assert all(f"{n}.parquet" in message for n in TABLES)


@pytest.mark.parametrize("name", list(TABLES))
def test_file_that_is_not_parquet(variant, name):
    folder = variant(name, b"user_id,item_id\n1,10\n" * 20)
    message = str(failure(folder))
    assert str(folder / f"{name}.parquet") in message and "not a readable parquet" in message


@pytest.mark.parametrize(
    ("name", "column", "rows", "shown"),
    [
        ("users", "user_id", [*USERS, user(2, occupation="impostor")], ["engineer", "impostor"]),
        ("items", "item_id", [*ITEMS, {**item(10), "title": "Remake"}], ["Casablanca", "Remake"]),
    ],
)
def test_duplicate_primary_key(variant, name, column, rows, shown):
    folder = variant(name, pa.Table.from_pylist(rows, schema=TABLES[name]))
    error = failure(folder)
    assert "duplicate" in str(error)
    lines = example_rows(error, folder / f"{name}.parquet", column)
    # Both rows of the duplicated key, and only them.
    assert len(lines) == 2 and all(s in line for s, line in zip(shown, lines, strict=True)), error


@pytest.mark.parametrize(
    ("column", "bad"),
    [("user_id", event(99, 10, "2024-04-01 00:00:00")), ("item_id", event(1, 999, "2024-04-01"))],
)
def test_interactions_refer_to_unknown_ids(variant, column, bad):
    rows = [*EVENTS, bad]
    folder = variant("interactions", pa.Table.from_pylist(rows, schema=TABLES["interactions"]))
    error = failure(folder)
    entity = column.removesuffix("_id")
    assert f"{entity}s.parquet" in str(error)  # says where the ids were looked up
    lines = example_rows(error, folder / "interactions.parquet", column)
    assert len(lines) == 1 and "2024-04-01" in lines[0], error


@pytest.mark.parametrize(
    ("value", "shown"), [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")]
)
def test_non_finite_rating(variant, value, shown):
    values = pa.array([5.0, value, None], pa.float64())  # a null rating is allowed
    folder = variant("interactions", with_column("interactions", "rating", values))
    error = failure(folder)
    assert "non-finite" in str(error)
    lines = example_rows(error, folder / "interactions.parquet", "rating")
    assert len(lines) == 1 and shown in lines[0].split() and T1 in lines[0], error


# --- Compatible types are accepted and normalised --------------------------------------------


def _epoch(text: str, unit: str) -> int:
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    return int(ts(text).timestamp()) * per_second


@pytest.mark.parametrize(
    ("unit", "tz"), [("ns", None), ("ns", "UTC"), ("ms", "America/New_York"), ("s", "+05:30")]
)
def test_compatible_types_are_normalised_to_canonical(tmp_path, unit, tz):
    src = tmp_path / "compatible"
    src.mkdir()
    users = {
        "user_id": pa.array([1, 2, 3], pa.int32()),
        "age": pa.array([30, 30, 30], pa.int8()),
        "gender": pa.array(["F", "F", "F"]).dictionary_encode(),
        "occupation": pa.array([u["occupation"] for u in USERS], pa.large_string()),
        "zip_code": pa.array([u["zip_code"] for u in USERS]).dictionary_encode(),
    }
    items = {
        "item_id": pa.array([10, 11, 12], pa.int16()),
        "title": pa.array([i["title"] for i in ITEMS], pa.large_string()),
        "release_year": pa.array([2000, None, 2000], pa.int32()),
        "genres": pa.array([i["genres"] for i in ITEMS], pa.large_list(pa.large_string())),
    }
    interactions = {
        "user_id": pa.array([1, 2, 3], pa.uint32()),
        "item_id": pa.array([10, 11, 12], pa.int32()),
        "rating": pa.array([5.0, 3.0, 1.5], pa.float32()),
        # Epoch values are instants: with a timezone they still mean the same UTC times,
        # without one they are read as UTC.
        "event_timestamp": pa.array(
            [_epoch(t, unit) for t in (T0, T1, T2)], pa.timestamp(unit, tz)
        ),
    }
    for name, columns in (("users", users), ("items", items), ("interactions", interactions)):
        pq.write_table(pa.table(columns), src / f"{name}.parquet")
    # The inputs really are non-canonical (parquet keeps the Arrow types).
    assert pq.read_schema(src / "users.parquet").field("gender").type != pa.string()

    out = tmp_path / "out"
    out.mkdir()
    summary = normalize_dataset(src, out)
    assert (summary.users, summary.items, summary.interactions) == (3, 3, 3)
    # Every column here is stored in a non-canonical type, and each cast is reported
    # (valid_from is absent: the epoch is filled in, not cast).
    reported = {(c["table"], c["column"]) for c in summary.casts}
    columns = {(name, c) for name, s in TABLES.items() for c in s.names if c != "valid_from"}
    assert reported == columns
    for name, schema in TABLES.items():
        got = pq.read_schema(out / f"{name}.parquet")
        assert got.names == schema.names, name
        for field in schema:
            assert got.field(field.name).type == field.type, (name, field.name)
        # Same values as the canonical fixture: normalising changes types, not data.
        key = schema.names[0] if name != "interactions" else "event_timestamp"
        assert sorted(pq.read_table(out / f"{name}.parquet").to_pylist(), key=lambda r: r[key]) == (
            sorted(canonical(name).to_pylist(), key=lambda r: r[key])
        ), name


def test_normalised_timestamps_keep_microseconds(variant, tmp_path):
    # Nanosecond input holding whole microseconds: kept exactly, not rounded to seconds.
    base = _epoch(T0, "ns")
    values = pa.array([base + 123_456_000, base + 1_000, base], pa.timestamp("ns"))
    folder = variant("interactions", with_column("interactions", "event_timestamp", values))
    out = tmp_path / "out"
    out.mkdir()
    summary = normalize_dataset(folder, out)
    got = pq.read_table(out / "interactions.parquet").column("event_timestamp").to_pylist()
    start = ts(T0)
    assert got == [
        start,
        start + timedelta(microseconds=1),
        start + timedelta(microseconds=123_456),
    ]
    assert [(c["column"], c["from_type"]) for c in summary.casts] == [
        ("event_timestamp", "timestamp[ns]")
    ]


def test_sub_microsecond_timestamps_are_rejected(variant):
    # Truncating them would change the events' times (and their order): the file is rejected.
    base = _epoch(T0, "ns")
    values = pa.array([base + 123_456_789, base + 1_000, base + 999], pa.timestamp("ns"))
    folder = variant("interactions", with_column("interactions", "event_timestamp", values))
    error = failure(folder)
    assert "2 of 3 rows hold values finer than a microsecond" in str(error)
    rows = example_rows(error, folder / "interactions.parquet", "event_timestamp")
    assert [line.split()[-1] for line in rows] == ["0", "2"], error
    assert "10:00:00.123456789" in rows[0], error


# --- Ingest leaves nothing partial; the CLI ---------------------------------------------------

BAD = {
    "missing_column": ("interactions", canonical("interactions").drop_columns(["rating"])),
    "unparseable": (
        "interactions",
        with_column("interactions", "event_timestamp", pa.array([T0, "not-a-time", T2])),
    ),
    # Fails only at the last check (references), after every file has been read.
    "unknown_user": (
        "interactions",
        pa.Table.from_pylist([*EVENTS, event(99, 10, T2)], schema=TABLES["interactions"]),
    ),
    "garbage": ("items", b"\x00garbage\xff" * 50),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def leftovers(data_dir: Path) -> list[str]:
    """Files or folders in the staging area (there should be none once ingest returns)."""
    staging = data_dir / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


@pytest.mark.parametrize("kind", list(BAD))
def test_failed_ingest_into_fresh_data_dir_leaves_nothing(variant, settings_for, kind):
    settings = settings_for(variant(*BAD[kind]))
    with pytest.raises(DatasetValidationError):
        ingest(settings)
    paths = settings.paths
    # Not even a dangling symlink or an unpublished version beside it.
    assert not paths.dataset.exists() and not paths.dataset.is_symlink()
    versions = paths.data_dir / ".dataset.versions"
    assert not versions.exists() or not any(versions.iterdir())
    assert leftovers(paths.data_dir) == []
    assert sorted(p.name for p in paths.data_dir.iterdir()) in ([], [".staging"])


@pytest.mark.parametrize("kind", list(BAD))
def test_failed_ingest_keeps_the_published_dataset(good, variant, settings_for, kind):
    paths = settings_for(good).paths
    ingest(settings_for(good))
    link, before = os.readlink(paths.dataset), snapshot(paths.dataset.resolve())
    assert {"users.parquet", "items.parquet", "interactions.parquet", "manifest.json"} <= set(
        before
    )

    with pytest.raises(DatasetValidationError):
        ingest(settings_for(variant(*BAD[kind])))
    # Still the same published version, byte for byte, and nothing left from the failed run.
    assert os.readlink(paths.dataset) == link
    assert snapshot(paths.dataset.resolve()) == before
    assert len(list((paths.data_dir / ".dataset.versions").iterdir())) == 1
    assert leftovers(paths.data_dir) == []


def test_cli_validate(good, variant, capsys):
    assert cli.main(["validate", str(good)]) == 0
    assert "users=3" in capsys.readouterr().out  # prints the summary of a valid folder
    # A folder that needs casts: the summary lists them.
    doubles = variant("items", with_column("items", "item_id", pa.array([10.0, 11.0, 12.0])))
    assert cli.main(["validate", str(doubles)]) == 0
    assert "'column': 'item_id', 'from_type': 'double'" in capsys.readouterr().out

    folder = variant(*BAD["unparseable"])
    assert cli.main(["validate", str(folder)]) == 1
    err = capsys.readouterr().err
    assert str(folder / "interactions.parquet") in err and "not-a-time" in err


def test_good_fixture_is_valid(good, tmp_path):
    # Every bad folder above differs from this one by one problem only.
    validate_dataset(good)
    out = tmp_path / "out"
    out.mkdir()
    summary = normalize_dataset(good, out)
    assert (summary.users, summary.items, summary.interactions) == (3, 3, 3)
    assert summary.casts == []  # canonical types already
    assert datetime.fromisoformat(summary.first_event) == ts(T0)
    for name in TABLES:
        assert pq.read_table(out / f"{name}.parquet").to_pylist() == canonical(name).to_pylist()
