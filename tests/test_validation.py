"""GX validation tests: a clean table passes every check, and each corruption fails exactly the
checks it should (the others still pass) with a detail naming the problem and example values.

Every corrupted frame is the clean frame below with one change; the offending values (user 77,
item 999, rating 6.0, ...) appear nowhere else, so finding them in a detail proves the detail
shows the offending rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.schema import INTERACTIONS, TABLES, DatasetValidationError
from recsys.validation.report import CheckOutcome, ValidationReport
from recsys.validation.tables import (
    read_batch,
    validate_feature_table,
    validate_interactions,
    validate_items,
    validate_users,
)

AS_OF = pd.Timestamp("2024-04-01", tz="UTC")
KNOWN_USERS = np.array([1, 2, 3])
KNOWN_ITEMS = np.array([10, 11, 12, 13])
ALL_INTERACTION_CHECKS = {
    "interactions not empty",
    "interactions columns",
    "interactions.user_id type",
    "interactions.item_id type",
    "interactions.rating type",
    "interactions.event_timestamp type",
    "interactions.user_id not null",
    "interactions.item_id not null",
    "interactions.event_timestamp not null",
    "interactions events unique",
    "interactions.rating in range",
    "interactions.event_timestamp not after as_of",
    "interactions.user_id known",
    "interactions.item_id known",
    "interactions.rating mean in range",
    "interactions.user_id top share",
}


def events() -> pd.DataFrame:
    """Six clean events: 3 users (at most 2 events each), 4 items, distinct times."""
    return pd.DataFrame(
        {
            "user_id": np.array([1, 1, 2, 2, 3, 3], dtype="int64"),
            "item_id": np.array([10, 11, 10, 12, 13, 11], dtype="int64"),
            "rating": [5.0, 3.0, 4.0, None, 1.5, 2.0],
            "event_timestamp": pd.to_datetime(
                [
                    "2024-01-01 10:00",
                    "2024-01-02 11:00",
                    "2024-02-01 12:00",
                    "2024-02-03 09:00",
                    "2024-03-15 08:30",
                    "2024-03-16 08:30",
                ],
                utc=True,
            ),
        }
    )


def check(frame: pd.DataFrame, **kwargs: object) -> ValidationReport:
    """Validate with every optional check on (as_of, known users and items)."""
    options: dict = {"as_of": AS_OF, "known_users": KNOWN_USERS, "known_items": KNOWN_ITEMS}
    return validate_interactions(frame, **{**options, **kwargs})


def failed(report: ValidationReport) -> dict[str, CheckOutcome]:
    return {o.name: o for o in report.failed}


def assert_only(report: ValidationReport, *names: str) -> dict[str, CheckOutcome]:
    """Exactly ``names`` failed; every other check ran and passed."""
    bad = failed(report)
    assert set(bad) == set(names), report.markdown()
    assert not report.success
    for outcome in report.outcomes:
        if outcome.name not in names:
            assert outcome.success, outcome
    return bad


# --- interactions ----------------------------------------------------------------------------


def test_clean_interactions_pass_every_check() -> None:
    report = check(events())
    assert report.success, report.markdown()
    assert report.rows == 6
    assert {o.name for o in report.outcomes} == ALL_INTERACTION_CHECKS
    assert all(o.table == "interactions" and o.unexpected_count == 0 for o in report.outcomes)
    metadata = report.to_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["rows"] == 6 and metadata["failed"] == 0
    assert metadata["passed"] == len(ALL_INTERACTION_CHECKS)
    assert metadata["checks"]["interactions events unique"] == {
        "success": True,
        "unexpected_count": 0,
    }
    # Every outcome's observed value is JSON-able too (it ends up in Dagster metadata).
    json.dumps([o.observed for o in report.outcomes])
    table = report.markdown()
    assert all(name in table for name in ALL_INTERACTION_CHECKS)


def test_optional_checks_are_left_out_when_not_asked_for() -> None:
    report = validate_interactions(events(), max_user_share=None)
    assert report.success
    assert {o.name for o in report.outcomes} == ALL_INTERACTION_CHECKS - {
        "interactions.event_timestamp not after as_of",
        "interactions.user_id known",
        "interactions.item_id known",
        "interactions.user_id top share",
    }


@pytest.mark.parametrize("dtype", ["Int64", "float64"])  # float64: pandas' int column with nulls
@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_null_id(column: str, dtype: str) -> None:
    frame = events()
    frame[column] = frame[column].astype(dtype)
    frame.loc[4, column] = None
    bad = assert_only(check(frame), f"interactions.{column} not null")
    outcome = bad[f"interactions.{column} not null"]
    assert outcome.unexpected_count == 1 and outcome.column == column
    assert "1 of 6 rows have a null" in outcome.detail and "row index [4]" in outcome.detail


def test_null_event_timestamp() -> None:
    frame = events()
    frame.loc[2, "event_timestamp"] = pd.NaT
    bad = assert_only(check(frame), "interactions.event_timestamp not null")
    assert "row index [2]" in bad["interactions.event_timestamp not null"].detail


def test_duplicate_event() -> None:
    frame = pd.concat([events(), events().iloc[[3]]], ignore_index=True)
    frame.loc[6, "rating"] = 4.5  # the same event twice, even with another rating, is a duplicate
    bad = assert_only(check(frame), "interactions events unique")
    outcome = bad["interactions events unique"]
    assert outcome.unexpected_count == 2
    assert "share their (user_id, item_id, event_timestamp)" in outcome.detail
    assert "'item_id': 12" in outcome.detail and "2024-02-03T09:00:00+00:00" in outcome.detail


@pytest.mark.parametrize("bad_rating", [6.0, 0.0])
def test_rating_out_of_range(bad_rating: float) -> None:
    frame = events()
    frame.loc[1, "rating"] = bad_rating
    bad = assert_only(check(frame), "interactions.rating in range")
    outcome = bad["interactions.rating in range"]
    assert outcome.unexpected_count == 1 and outcome.observed == [bad_rating]
    assert f"outside [1.0, 5.0]; e.g. [{bad_rating}]" in outcome.detail


def test_rating_range_is_a_parameter() -> None:
    frame = events()
    frame["rating"] = frame["rating"] * 2  # a 1-10 scale
    assert not check(frame).success
    assert check(frame, rating_range=(1.0, 10.0)).success


def test_timestamp_after_as_of() -> None:
    frame = events()
    frame.loc[5, "event_timestamp"] = pd.Timestamp("2024-06-30 23:00", tz="UTC")
    bad = assert_only(check(frame), "interactions.event_timestamp not after as_of")
    detail = bad["interactions.event_timestamp not after as_of"].detail
    assert "after as_of 2024-04-01T00:00:00+00:00" in detail
    assert "2024-06-30T23:00:00+00:00" in detail


def test_naive_timestamps_are_utc() -> None:
    frame = events()
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize(None)
    assert check(frame).success
    late = check(frame, as_of=pd.Timestamp("2024-03-15 08:30", tz="UTC"))  # inclusive bound
    assert set(failed(late)) == {"interactions.event_timestamp not after as_of"}
    assert failed(late)["interactions.event_timestamp not after as_of"].unexpected_count == 1


def test_unknown_item() -> None:
    frame = events()
    frame.loc[2, "item_id"] = 999
    bad = assert_only(check(frame), "interactions.item_id known")
    outcome = bad["interactions.item_id known"]
    assert outcome.unexpected_count == 1 and outcome.observed == [999]
    assert "not one of the 4 known items; e.g. [999]" in outcome.detail


def test_unknown_user() -> None:
    frame = events()
    frame.loc[5, "user_id"] = 77
    bad = assert_only(check(frame), "interactions.user_id known")
    assert "not one of the 3 known users; e.g. [77]" in bad["interactions.user_id known"].detail


def test_most_active_user_share() -> None:
    # 30 events of user 1 and one each of 20 others: the bound applies from 20 users on.
    frame = pd.concat([events().iloc[[0]]] * 50, ignore_index=True)
    frame["user_id"] = [1] * 30 + list(range(100, 120))
    frame["event_timestamp"] += pd.to_timedelta(range(50), unit="min")
    known = np.array([1, *range(100, 120)])
    bad = assert_only(check(frame, known_users=known), "interactions.user_id top share")
    outcome = bad["interactions.user_id top share"]
    assert outcome.observed == pytest.approx(30 / 50, abs=1e-4)
    assert "user 1 has 30 of 50 events" in outcome.detail
    assert check(frame, known_users=known, max_user_share=0.7).success
    # With fewer users the bound says nothing: one user holding most events is normal.
    few = events()
    few["user_id"] = [1, 1, 1, 1, 2, 3]
    report = check(few)
    assert report.success
    (share,) = [o for o in report.outcomes if o.name == "interactions.user_id top share"]
    assert share.detail.startswith("not applicable")


@pytest.mark.parametrize(
    ("column", "dependent"),
    [
        ("rating", {"interactions.rating in range", "interactions.rating mean in range"}),
        (
            "item_id",
            {
                "interactions.item_id not null",
                "interactions events unique",
                "interactions.item_id known",
            },
        ),
    ],
)
def test_missing_column(column: str, dependent: set[str]) -> None:
    report = check(events().drop(columns=column))
    bad = assert_only(
        report, "interactions columns", f"interactions.{column} type", *sorted(dependent)
    )
    assert f"missing column(s) ['{column}']" in bad["interactions columns"].detail
    assert bad[f"interactions.{column} type"].detail == f"interactions.{column} is missing"
    for name in dependent:  # not run, and not passed either
        assert bad[name].detail.startswith(f"skipped: column '{column}' is missing")


def test_extra_column() -> None:
    bad = assert_only(check(events().assign(source="web")), "interactions columns")
    assert "unexpected column(s) ['source']" in bad["interactions columns"].detail


def test_wrong_type() -> None:
    frame = events()
    frame["item_id"] = frame["item_id"].astype(str)
    bad = assert_only(
        check(frame),
        "interactions.item_id type",
        "interactions.item_id not null",
        "interactions events unique",
        "interactions.item_id known",
    )
    outcome = bad["interactions.item_id type"]
    assert outcome.observed == "object"
    assert "has dtype object, expected integer values; e.g. ['10', '11'" in outcome.detail
    assert bad["interactions.item_id known"].detail.startswith("skipped: column 'item_id' has")


def test_fractional_ids_are_a_wrong_type() -> None:
    frame = events()
    frame["user_id"] = frame["user_id"].astype(float)
    frame.loc[0, "user_id"] = 1.5
    bad = failed(check(frame))
    assert "non-integer values, e.g. [1.5]" in bad["interactions.user_id type"].detail


def test_empty_frame() -> None:
    report = check(events().iloc[:0])
    bad = assert_only(report, "interactions not empty")
    assert report.rows == 0
    assert bad["interactions not empty"].detail == "interactions has no rows (observed 0)"
    not_applicable = {o.name for o in report.outcomes if o.detail.startswith("not applicable")}
    assert not_applicable == {"interactions.rating mean in range", "interactions.user_id top share"}


def test_frame_without_columns_does_not_raise() -> None:
    report = check(pd.DataFrame())
    assert report.rows == 0 and not report.success
    assert {o.name for o in report.outcomes} == ALL_INTERACTION_CHECKS
    assert all(not o.success for o in report.outcomes)


def test_implicit_feedback_without_ratings() -> None:
    frame = events()
    frame["rating"] = np.nan
    report = check(frame)
    assert report.success, report.markdown()


# --- users and items -------------------------------------------------------------------------


def users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "age": [25, None, 61],  # float64 with a null: ages are optional
            "gender": ["F", "M", None],
            "occupation": ["writer", "engineer", "artist"],
            "zip_code": ["10001", "94110", "60601"],
        }
    )


def items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [10, 11, 12],
            "title": ["Casablanca", "Airplane", "Vertigo"],
            "release_year": [1942, None, 1958],
            "genres": [["Drama"], ["Comedy"], np.array(["Drama", "Thriller"], dtype=object)],
        }
    )


def test_clean_users_and_items_pass() -> None:
    for report in (validate_users(users()), validate_items(items())):
        assert report.success, report.markdown()
        # not empty, columns, one type check per column, key and valid_from not null (absent:
        # the epoch), key unique, range
        assert len(report.outcomes) == 6 + len(TABLES[report.table])


def test_duplicate_user() -> None:
    frame = users()
    frame.loc[2, "user_id"] = 1
    bad = assert_only(validate_users(frame), "users.user_id unique")
    outcome = bad["users.user_id unique"]
    assert outcome.unexpected_count == 2
    assert "share their users.user_id with another row; e.g. [1]" in outcome.detail


def test_age_out_of_range() -> None:
    frame = users()
    frame.loc[0, "age"] = 200
    bad = assert_only(validate_users(frame), "users.age in range")
    assert "have users.age outside [0, 120]; e.g. [200" in bad["users.age in range"].detail


def test_duplicate_item_and_bad_year() -> None:
    frame = items()
    frame.loc[1, "item_id"] = 12
    frame.loc[0, "release_year"] = 1700
    bad = assert_only(validate_items(frame), "items.item_id unique", "items.release_year in range")
    assert "e.g. [12]" in bad["items.item_id unique"].detail
    assert "outside [1800, 2100]; e.g. [1700" in bad["items.release_year in range"].detail


def test_items_genres_must_be_lists() -> None:
    frame = items()
    frame["genres"] = "Drama|Comedy"
    bad = assert_only(validate_items(frame), "items.genres type")
    assert "expected list values" in bad["items.genres type"].detail


# --- feature tables --------------------------------------------------------------------------


def features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "event_timestamp": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-01-01"], utc=True),
            "created_timestamp": pd.to_datetime(["2024-01-02"] * 3, utc=True),
            "user_mean_rating": [4.0, 3.5, 2.0],
        }
    )


def test_clean_feature_table_passes() -> None:
    report = validate_feature_table(features(), key="user_id", table="user_features")
    assert report.success, report.markdown()
    assert report.table == "user_features"


def test_feature_table_duplicate_key_and_timestamp() -> None:
    frame = features()
    frame.loc[2, "user_id"] = 1
    frame.loc[2, "event_timestamp"] = frame.loc[0, "event_timestamp"]
    bad = assert_only(validate_feature_table(frame, key="user_id"), "features rows unique")
    detail = bad["features rows unique"].detail
    assert "(user_id, event_timestamp, created_timestamp)" in detail and "'user_id': 1" in detail
    # A later created_timestamp for the same key and time is a correction, not a duplicate.
    frame.loc[2, "created_timestamp"] = pd.Timestamp("2024-03-01", tz="UTC")
    assert validate_feature_table(frame, key="user_id").success


def test_feature_table_null_key_and_missing_timestamp() -> None:
    frame = features()
    frame["user_id"] = frame["user_id"].astype("Int64")
    frame.loc[1, "user_id"] = None
    assert_only(validate_feature_table(frame, key="user_id"), "features.user_id not null")
    bad = assert_only(
        validate_feature_table(features().drop(columns="event_timestamp"), key="user_id"),
        "features columns",
        "features.event_timestamp type",
        "features.event_timestamp not null",
        "features rows unique",
    )
    assert "missing column(s) ['event_timestamp']" in bad["features columns"].detail


# --- reading batches -------------------------------------------------------------------------


def test_read_batch_file_and_folder(tmp_path: Path) -> None:
    table = pa.Table.from_pandas(events(), preserve_index=False).cast(INTERACTIONS)
    pq.write_table(table, tmp_path / "batch.parquet")
    (tmp_path / "folder").mkdir()
    pq.write_table(table, tmp_path / "folder" / "interactions.parquet")
    for path in (tmp_path / "batch.parquet", tmp_path / "folder"):
        frame = read_batch(path)
        assert len(frame) == 6
        assert frame.attrs["casts"] == []  # canonical types: nothing to cast
        assert check(frame).success


@pytest.mark.parametrize(
    ("content", "message"),
    [(np.random.default_rng(0).bytes(4096), "not a readable parquet file"), (b"", "0 bytes")],
)
def test_read_batch_unreadable_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    with pytest.raises(DatasetValidationError) as info:
        read_batch(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_read_batch_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetValidationError, match="interactions.parquet: file is missing"):
        read_batch(tmp_path)
