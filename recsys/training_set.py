"""The point-in-time training set: Feast ``get_historical_features`` plus a temporal split.

Entity rows are the interactions before ``as_of`` (user, item, rating, time): each gets the
user's and the item's feature values as they were known just before that interaction.
The split is global and temporal, by two cut timestamps::

    train: t < val_start      validation: val_start <= t < test_start      test: t >= test_start

Cuts left unset are quantiles of the event timestamps (default 80% / 10% / 10%). A user
whose first event is at or after ``test_start`` is *cold* in the test split: the model has
never seen them, only their profile.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features import default_as_of
from recsys.io import atomic_write_json, publish_dir, read_json, staging_dir
from recsys.settings import Settings
from recsys.sql import connect, one, parquet, timestamp

log = logging.getLogger(__name__)
FEATURE_SERVICE = "two_tower_training_v1"
ENTITY_COLUMNS = ["user_id", "item_id", "rating", "event_timestamp"]


@dataclass(frozen=True)
class SplitCuts:
    as_of: datetime
    val_start: datetime
    test_start: datetime


@dataclass(frozen=True)
class TrainingSetSummary:
    cuts: SplitCuts
    rows: dict[str, int]
    users: dict[str, int]
    cold_test_users: int
    feature_coverage: dict[str, float]
    path: str


def split_cuts(dataset: Path, settings: Settings, as_of: datetime | None = None) -> SplitCuts:
    """Cut timestamps from settings, or the event-time quantiles before ``as_of``."""
    as_of = as_of or settings.as_of or default_as_of(dataset)
    val_q = 1 - settings.val_fraction - settings.test_fraction
    test_q = 1 - settings.test_fraction
    val_start, test_start = one(
        connect(),
        f"SELECT quantile_disc(event_timestamp, {val_q}), quantile_disc(event_timestamp, {test_q}) "
        f"FROM {parquet(dataset, 'interactions')} WHERE event_timestamp < {timestamp(as_of)}",
    )
    if val_start is None:
        raise ValueError(f"no interactions before as_of={as_of} in {dataset}")
    cuts = SplitCuts(
        as_of=as_of,
        val_start=settings.val_start or val_start,
        test_start=settings.test_start or test_start,
    )
    if not cuts.val_start < cuts.test_start <= cuts.as_of:
        raise ValueError(f"split cuts out of order (need val_start < test_start <= as_of): {cuts}")
    return cuts


def entity_rows(dataset: Path, as_of: datetime) -> Any:
    """The interactions before ``as_of`` as Feast entity rows (a pandas DataFrame)."""
    return (
        connect()
        .execute(
            f"SELECT {', '.join(ENTITY_COLUMNS)} FROM {parquet(dataset, 'interactions')} "
            f"WHERE event_timestamp < {timestamp(as_of)} ORDER BY event_timestamp, user_id, item_id"
        )
        .fetchdf()
    )


def historical_features(store: Any, rows: Any) -> pa.Table:
    """Feast's point-in-time join of ``rows`` with the training feature service."""
    job = store.get_historical_features(
        entity_df=rows, features=store.get_feature_service(FEATURE_SERVICE)
    )
    return job.to_arrow()


def with_split(table: pa.Table, cuts: SplitCuts) -> pa.Table:
    """Sorted rows with a ``split`` column from the cuts (the order makes runs comparable)."""
    con = duckdb.connect()
    con.register("t", table)
    return con.sql(
        f"""SELECT *, CASE WHEN event_timestamp < {timestamp(cuts.val_start)} THEN 'train'
                           WHEN event_timestamp < {timestamp(cuts.test_start)} THEN 'val'
                           ELSE 'test' END AS split
            FROM t ORDER BY event_timestamp, user_id, item_id"""
    ).to_arrow_table()


def summarize(table: pa.Table, cuts: SplitCuts, path: Path) -> TrainingSetSummary:
    con = duckdb.connect()
    con.register("t", table)
    rows = dict(con.execute("SELECT split, count(*) FROM t GROUP BY split").fetchall())
    users = dict(
        con.execute("SELECT split, count(DISTINCT user_id) FROM t GROUP BY split").fetchall()
    )
    (cold,) = one(
        con,
        "SELECT count(DISTINCT user_id) FROM t WHERE split = 'test' AND user_id NOT IN "
        "(SELECT user_id FROM t WHERE split <> 'test')",
    )
    features = [c for c in table.column_names if c not in {*ENTITY_COLUMNS, "split"}]
    coverage = {
        c: round(1 - table.column(c).null_count / max(table.num_rows, 1), 4) for c in features
    }
    return TrainingSetSummary(cuts, rows, users, cold, coverage, str(path))


def build_training_set(settings: Settings, store: Any | None = None) -> TrainingSetSummary:
    """Build ``<data>/training/training_set.parquet`` and its ``summary.json``, atomically."""
    from recsys.store import feature_store

    paths = settings.paths
    store = store or feature_store(paths)
    cuts = split_cuts(paths.dataset, settings)
    rows = entity_rows(paths.dataset, cuts.as_of)
    log.info("point-in-time join of %d entity rows through Feast", len(rows))
    table = with_split(historical_features(store, rows), cuts)
    with staging_dir(paths.data_dir, "training") as stage:
        pq.write_table(table, stage / "training_set.parquet", compression="zstd")
        summary = summarize(table, cuts, paths.training / "training_set.parquet")
        atomic_write_json(stage / "summary.json", asdict(summary))
        publish_dir(stage, paths.training)
    return summary


def load_summary(training_dir: Path) -> dict[str, Any]:
    return read_json(Path(training_dir) / "summary.json")
