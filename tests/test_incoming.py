"""Batches for a dataset whose events carry their own ids (the optional ``event_id``
column): events are recognised by id, not by (user, item, time)."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import incoming
from recsys.dataset import append_accepted, ensure_dataset
from recsys.schema import INTERACTIONS_WITH_ID
from recsys.settings import Settings
from tests.conftest import event, item, ts, user, write_dataset


@pytest.fixture
def settings(tmp_path):
    source = write_dataset(tmp_path / "src", users=[user(1), user(2)],
                           items=[item(10), item(11), item(12)], interactions=[])  # fmt: skip
    rows = [
        {**event(1, 10, "2024-01-01 10:00:00"), "event_id": "a"},
        {**event(2, 11, "2024-01-01 11:00:00"), "event_id": "b"},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=INTERACTIONS_WITH_ID),
                   source / "interactions.parquet")  # fmt: skip
    settings = Settings(data_dir=tmp_path / "data", dataset=str(source))
    ensure_dataset(settings)
    settings.paths.incoming.mkdir(parents=True)
    return settings


def events(settings) -> pd.DataFrame:
    return pd.read_parquet(settings.paths.dataset / "interactions.parquet")


def drop(settings, rows, name):
    pd.DataFrame(rows).to_parquet(settings.paths.incoming / name)
    staged = incoming.stage(settings)
    append_accepted(settings)
    return staged


def test_events_are_known_by_their_id(settings):
    assert list(events(settings).event_id) == ["a", "b"]
    # "a" again with a corrected time (a re-send), and "c", an event at the very same
    # (user, item, time) as "b" but a distinct one: only "c" is new.
    staged = drop(settings, [
        {"user_id": 1, "item_id": 10, "rating": 4.0, "event_timestamp": ts("2024-01-01 10:00:05"),
         "event_id": "a"},
        {"user_id": 2, "item_id": 11, "rating": 4.0, "event_timestamp": ts("2024-01-01 11:00:00"),
         "event_id": "c"},
    ], "b1.parquet")  # fmt: skip
    assert staged.status == "accepted" and staged.duplicate_events == 1
    assert sorted(events(settings).event_id) == ["a", "b", "c"]


def test_integer_ids_are_kept_as_text_and_a_batch_without_ids_is_rejected(settings):
    staged = drop(settings, [{"user_id": 1, "item_id": 12, "rating": 3.0,
                              "event_timestamp": ts("2024-01-02 10:00:00"), "event_id": 7}],
                  "ints.parquet")  # fmt: skip
    assert staged.status == "accepted"
    assert any(c["column"] == "event_id" for c in staged.casts)
    assert "7" in set(events(settings).event_id)
    staged = drop(settings, [{"user_id": 1, "item_id": 11, "rating": 3.0,
                              "event_timestamp": ts("2024-01-03 10:00:00")}], "noid.parquet")  # fmt: skip
    assert staged.status == "rejected"
    assert "interactions columns" in {o.name for o in staged.report.failed}
    assert len(events(settings)) == 3
