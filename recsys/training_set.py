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

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.audit import AuditFailed, audit_training_set, publish_audited
from recsys.features.build import default_as_of
from recsys.io import atomic_write_json, staging_dir
from recsys.settings import Settings
from recsys.sql import connect, one, parquet, string, timestamp

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


def entity_rows(dataset: Path, as_of: datetime, as_sql: bool = False) -> Any:
    """The interactions before ``as_of`` as Feast entity rows: a SQL query (which the
    project's offline store streams from parquet) or a pandas DataFrame (any store)."""
    sql = (
        f"SELECT {', '.join(ENTITY_COLUMNS)} FROM {parquet(dataset, 'interactions')} "
        f"WHERE event_timestamp < {timestamp(as_of)}"
    )
    return sql if as_sql else connect().sql(sql).df()


def training_job(store: Any, rows: Any) -> Any:
    """Feast's point-in-time join of ``rows`` with the training feature service (not run)."""
    return store.get_historical_features(
        entity_df=rows, features=store.get_feature_service(FEATURE_SERVICE)
    )


def historical_features(store: Any, rows: Any) -> pa.Table:
    """The training-service features of ``rows``, as one Arrow table."""
    return training_job(store, rows).to_arrow()


def _engine(store: Any) -> str | None:
    """Which of the project's offline stores ``store`` has: "duckdb" or "spark" (SQL entity
    rows, streamed to parquet), else None (another Feast store: a DataFrame in memory)."""
    kind = store.config.offline_store.type
    if kind == "recsys.offline_store.DuckDBAsofOfflineStore":
        return "duckdb"
    if kind == "recsys.spark.offline_store.SparkAsofOfflineStore":
        return "spark"
    return None


def _join_to_parquet(store: Any, dataset: Path, as_of: datetime, out: Path) -> None:
    engine = _engine(store)
    rows = entity_rows(dataset, as_of, as_sql=engine is not None)
    if engine == "spark":
        from recsys.features.dialect import to_spark

        rows = to_spark(rows)
    job = training_job(store, rows)
    if engine is not None:
        job.to_parquet(out)
    else:
        pq.write_table(job.to_arrow(), out)


def _split_sql(joined: Path, cuts: SplitCuts) -> str:
    """Rows with a ``split`` column, in a fixed order so seeded runs see the same data."""
    return f"""SELECT *, CASE WHEN event_timestamp < {timestamp(cuts.val_start)} THEN 'train'
                             WHEN event_timestamp < {timestamp(cuts.test_start)} THEN 'val'
                             ELSE 'test' END AS split
               FROM read_parquet({string(str(joined))})
               ORDER BY event_timestamp, user_id, item_id, rating"""


def summarize(path: Path, cuts: SplitCuts, published: Path) -> TrainingSetSummary:
    con = connect()
    table = f"read_parquet({string(str(path))})"
    rows = dict(con.execute(f"SELECT split, count(*) FROM {table} GROUP BY split").fetchall())
    users = dict(
        con.execute(f"SELECT split, count(DISTINCT user_id) FROM {table} GROUP BY split").fetchall()
    )
    (cold,) = one(
        con,
        f"SELECT count(DISTINCT user_id) FROM {table} WHERE split = 'test' AND user_id NOT IN "
        f"(SELECT user_id FROM {table} WHERE split <> 'test')",
    )
    columns = [c for c in pq.read_schema(path).names if c not in {*ENTITY_COLUMNS, "split"}]
    counts = one(con, f"SELECT count(*), {', '.join(f'count({c})' for c in columns)} FROM {table}")
    coverage = {
        c: round(n / max(counts[0], 1), 4) for c, n in zip(columns, counts[1:], strict=True)
    }
    return TrainingSetSummary(cuts, rows, users, cold, coverage, str(published))


def build_training_set(settings: Settings, store: Any | None = None) -> TrainingSetSummary:
    """Build ``<data>/training/training_set.parquet`` and its ``summary.json``, audit them in
    staging (`recsys.audit.audit_training_set`) and publish them atomically; a failed audit
    raises :class:`recsys.audit.AuditFailed` and leaves the published training set as it was.

    With the project's offline store nothing passes through pandas: entity rows are a SQL
    query over the interactions, the join streams to parquet, the split is added in DuckDB.
    """
    from recsys.store import feature_store_for

    paths = settings.paths
    store = store or feature_store_for(settings)
    cuts = split_cuts(paths.dataset, settings)
    with staging_dir(paths.data_dir, "training") as stage:
        joined, final = stage / "joined.parquet", stage / "training_set.parquet"
        log.info("point-in-time join through Feast (%s)", type(store.config.offline_store).__name__)
        _join_to_parquet(store, paths.dataset, cuts.as_of, joined)
        connect(settings.duckdb_memory_limit).execute(
            f"COPY ({_split_sql(joined, cuts)}) TO {string(str(final))} "
            f"(FORMAT parquet, COMPRESSION zstd)"
        )
        joined.unlink()
        summary = summarize(final, cuts, paths.training / "training_set.parquet")
        atomic_write_json(stage / "summary.json", asdict(summary))
        (expected,) = one(
            connect(),
            f"SELECT count(*) FROM ({entity_rows(paths.dataset, cuts.as_of, as_sql=True)})",
        )
        audit = publish_audited(stage, paths.training, paths.data_dir,
                                audit_training_set(expected))  # fmt: skip
    if not audit.passed:
        raise AuditFailed(audit)
    return summary
