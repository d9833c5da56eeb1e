"""A Feast offline store whose point-in-time joins run on Spark, with the semantics of
`recsys.offline_store`'s DuckDB ASOF store (see `recsys.asof`): for an entity row at t, each
view's row with the same key and the latest ``event_timestamp <= t`` (ties: the latest
``created_timestamp``), null past the view's TTL; one output row per entity row, the entity
columns then each view's features, in the views' order.

Spark has no ASOF join. Per join key, the entity rows and the rows of every view keyed by it
are unioned and sorted by (key, time, side, created) with the views' rows before an entity
row of the same time; ``last(view row, ignorenulls)`` over that order is then each entity
row's match. One shuffle per join key (two here: user, item), O(n log n), whatever the rows
per key: a range join (Feast's stock stores) multiplies them on skewed keys.

Plugged in by dotted path (`recsys.store.repo_config` renders it under engine "spark")::

    offline_store:
      type: recsys.spark.offline_store.SparkAsofOfflineStore
      master: local[2]

Entity rows: a pandas DataFrame, an Arrow table, a parquet path, a Spark SQL query or a
Spark DataFrame. Materialization pulls run on Spark too.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast.infra.offline_stores.offline_store import (
    OfflineStore,
    RetrievalJob,
    RetrievalMetadata,
)
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import StrictInt, StrictStr

from recsys.asof import ViewSpec, view_spec
from recsys.offline_store import (
    ParquetRetrievalJob,
    _is_parquet_file_source,
    _looks_like_path,
    _source_path,
)
from recsys.spark.io import cast_batch, write_parquet


class SparkAsofOfflineStoreConfig(FeastConfigBaseModel):
    """Settings of :class:`SparkAsofOfflineStore`, rendered from `recsys.settings.Settings`."""

    type: StrictStr = "recsys.spark.offline_store.SparkAsofOfflineStore"
    master: StrictStr = "local[2]"  # RECSYS_SPARK_MASTER
    driver_memory: StrictStr = "2g"  # RECSYS_SPARK_DRIVER_MEMORY
    shuffle_partitions: StrictInt = 4  # RECSYS_SPARK_SHUFFLE_PARTITIONS
    scratch: StrictStr = "/tmp/recsys-spark"  # Spark's local dirs: <data>/.spark


def _spark(config: RepoConfig) -> Any:
    from recsys.spark.session import session

    store = config.offline_store
    return session(store.master, store.driver_memory, store.shuffle_partitions, Path(store.scratch))


def _entity_frame(spark: Any, entity_df: Any) -> Any:
    from pyspark.sql import DataFrame

    if isinstance(entity_df, DataFrame):
        return entity_df
    if isinstance(entity_df, pd.DataFrame | pa.Table):
        return spark.createDataFrame(entity_df)
    if isinstance(entity_df, Path) or (isinstance(entity_df, str) and _looks_like_path(entity_df)):
        return spark.read.parquet(str(entity_df))
    if isinstance(entity_df, str):
        return spark.sql(entity_df)  # a Spark SQL query, as Feast's Spark store accepts
    raise TypeError(
        f"entity_df of type {type(entity_df).__name__} is not supported: pass a pandas "
        "DataFrame, an Arrow table, a parquet path, a Spark SQL query or a Spark DataFrame"
    )


def _timestamp_column(frame: Any) -> str:
    from pyspark.sql.types import DateType, TimestampNTZType, TimestampType

    if "event_timestamp" in frame.columns:
        return "event_timestamp"
    kinds = (TimestampType, TimestampNTZType, DateType)
    stamps = [f.name for f in frame.schema.fields if isinstance(f.dataType, kinds)]
    if len(stamps) != 1:
        raise ValueError(
            f"entity rows need one timestamp column (or one named event_timestamp); "
            f"found {stamps or 'none'} among {frame.columns}"
        )
    return stamps[0]


def _join_key_group(entity: Any, ts: str, specs: list[tuple[int, ViewSpec]]) -> Any:
    """``entity`` with the matched row (a struct ``_m{k}``: time and features) of each view
    ``k`` of ``specs``, which share one join key."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = [e for e, _ in specs[0][1].join_keys]
    cols = entity.columns
    side = entity.select(
        *cols,
        *[F.col(e).alias(f"_k{i}") for i, e in enumerate(keys)],
        F.col(ts).cast("timestamp").alias("_ts"),
        F.lit(1).alias("_side"),
        F.lit(None).cast("timestamp").alias("_created"),
    )
    for k, spec in specs:
        source = F.struct(
            F.col("_ts").alias("ts"),
            *[F.col(c).alias(f"f{i}") for i, (c, _) in enumerate(spec.features)],
        )
        rows = entity.sparkSession.read.parquet(spec.scan).select(
            *[F.col(s).alias(f"_k{i}") for i, (_, s) in enumerate(spec.join_keys)],
            F.col(spec.timestamp_field).cast("timestamp").alias("_ts"),
            F.lit(0).alias("_side"),
            (F.col(spec.created_column) if spec.created_column else F.lit(None))
            .cast("timestamp")
            .alias("_created"),
            *[F.col(c) for c, _ in spec.features],
        )
        rows = rows.select(*[c for c in rows.columns if c.startswith("_")], source.alias(f"_v{k}"))
        side = side.unionByName(rows, allowMissingColumns=True)
    # Views' rows before an entity row of the same time; among them the latest created last
    # (none first, as DuckDB's coalesce(created, '-infinity')).
    window = (
        Window.partitionBy(*[f"_k{i}" for i in range(len(keys))])
        .orderBy("_ts", "_side", F.col("_created").asc_nulls_first())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    matched = side.select(
        *cols,
        "_side",
        *[F.last(f"_v{k}", ignorenulls=True).over(window).alias(f"_m{k}") for k, _ in specs],
    )
    return matched.where("_side = 1").drop("_side")


def asof_frame(entity: Any, specs: list[ViewSpec]) -> Any:
    """``entity`` (a Spark DataFrame) joined as of its timestamp with every view of ``specs``:
    its columns, then each view's features (null past the view's TTL)."""
    from pyspark.sql import functions as F

    ts = _timestamp_column(entity)
    cols = entity.columns
    groups: dict[tuple[str, ...], list[tuple[int, ViewSpec]]] = {}
    for k, spec in enumerate(specs):
        groups.setdefault(tuple(e for e, _ in spec.join_keys), []).append((k, spec))
    joined = entity
    for group in groups.values():
        joined = _join_key_group(joined, ts, group)
    selects = []
    for k, spec in enumerate(specs):
        fresh = F.lit(True)
        if spec.ttl is not None:
            micros = int(spec.ttl.total_seconds() * 1_000_000)
            entity_us = F.unix_micros(F.col(ts).cast("timestamp"))
            fresh = F.unix_micros(F.col(f"_m{k}.ts")) >= entity_us - F.lit(micros)
        for i, (_, output) in enumerate(spec.features):
            selects.append(F.when(fresh, F.col(f"_m{k}.f{i}")).alias(output))
    return joined.select(*cols, *selects)


class SparkRetrievalJob(ParquetRetrievalJob):
    """A Spark DataFrame not yet run, whose result has ``schema``'s Arrow types."""

    def __init__(
        self,
        frame: Any,
        schema: pa.Schema,
        full_feature_names: bool = False,
        metadata_fn: Any = None,
    ) -> None:
        super().__init__(full_feature_names, metadata_fn)
        self.frame, self.schema = frame, schema

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        table = self.frame.toArrow()
        return pa.Table.from_batches(
            [cast_batch(b, self.schema) for b in table.to_batches()], schema=self.schema
        )

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        # Converted by DuckDB, as the DuckDB store's frames are (nullable Int64, NA for a
        # missing list): consumers get the same pandas frame whatever the engine.
        from recsys.sql import connect

        return connect().from_arrow(self._to_arrow_internal(timeout)).df()

    def to_parquet(self, path: str | Path) -> Path:
        """Write the result into one parquet file (Spark's parts streamed into it)."""
        write_parquet(self.frame, Path(path), self.schema)
        return Path(path)

    def to_spark_df(self) -> Any:
        return self.frame


def _arrow_schema(frame: Any, typed: dict[str, pa.DataType]) -> pa.Schema:
    """The result's Arrow schema: the features' types as their parquet files store them,
    the other columns as Spark converts them."""
    from pyspark.sql.pandas.types import to_arrow_type

    return pa.schema(
        [
            (f.name, typed.get(f.name) or to_arrow_type(f.dataType, timezone="UTC"))
            for f in frame.schema.fields
        ]
    )


def _source_types(spec: ViewSpec) -> dict[str, pa.DataType]:
    stored = pq.read_schema(spec.scan)
    return {out: stored.field(col).type for col, out in spec.features}


def _require_parquet(sources: list[Any]) -> None:
    bad = [s.name for s in sources if not _is_parquet_file_source(s)]
    if bad:
        raise ValueError(f"the Spark offline store reads parquet FileSources only; not {bad}")


class SparkAsofOfflineStore(OfflineStore):
    """Point-in-time joins and materialization pulls on Spark, over parquet FileSources."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[Any],
        feature_refs: list[str],
        entity_df: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
    ) -> RetrievalJob:
        _require_parquet([fv.batch_source for fv in feature_views])
        spark = _spark(config)
        entity = _entity_frame(spark, entity_df)
        wanted: dict[str, list[str]] = {}
        for ref in feature_refs:
            view, feature = ref.split(":", 1)
            wanted.setdefault(view, []).append(feature)
        # Each spec's ``scan`` is its parquet path here (DuckDB's: a read_parquet call).
        specs = []
        for fv in feature_views:
            path = _source_path(fv.batch_source, config.repo_path)
            spec = view_spec(fv, wanted.get(fv.projection.name_to_use(), []), full_feature_names,
                             path=path)  # fmt: skip
            specs.append(replace(spec, scan=path, late_path=None))
        for spec in specs:
            missing = [e for e, _ in spec.join_keys if e not in entity.columns]
            if missing:
                raise ValueError(
                    f"entity rows lack the join key(s) {missing} of feature view '{spec.name}'"
                )
        frame = asof_frame(entity, specs)
        typed = {k: v for spec in specs for k, v in _source_types(spec).items()}
        ts = _timestamp_column(entity)

        def metadata() -> RetrievalMetadata:
            from pyspark.sql import functions as F

            low, high = entity.select(F.min(ts), F.max(ts)).first()
            keys = [c for c in entity.columns if c != ts]
            return RetrievalMetadata(
                features=feature_refs, keys=keys, min_event_timestamp=low, max_event_timestamp=high
            )

        return SparkRetrievalJob(frame, _arrow_schema(frame, typed), full_feature_names, metadata)

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: Any,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        rows, schema = _pull(
            config, data_source, join_key_columns, feature_name_columns, timestamp_field,
            created_timestamp_column, start_date, end_date,
        )  # fmt: skip
        order = [F.col(timestamp_field).desc()]
        if created_timestamp_column:
            order.append(F.col(created_timestamp_column).desc_nulls_last())
        window = Window.partitionBy(*join_key_columns).orderBy(*order)
        rank = f"_rn_{uuid.uuid4().hex[:6]}"
        latest = rows.withColumn(rank, F.row_number().over(window)).where(F.col(rank) == 1)
        return SparkRetrievalJob(latest.drop(rank), schema)

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: Any,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        rows, schema = _pull(
            config, data_source, join_key_columns, feature_name_columns, timestamp_field,
            created_timestamp_column, start_date, end_date,
        )  # fmt: skip
        return SparkRetrievalJob(rows, schema)


def _pull(
    config: RepoConfig,
    source: Any,
    keys: list[str],
    features: list[str],
    timestamp_field: str,
    created: str | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[Any, pa.Schema]:
    """Rows of a parquet source in [start, end] (source column names), and their Arrow
    schema as stored."""
    from pyspark.sql import functions as F

    _require_parquet([source])
    path = _source_path(source, config.repo_path)
    names = list(
        dict.fromkeys([*keys, *features, timestamp_field] + ([created] if created else []))
    )
    rows = _spark(config).read.parquet(path).select(*names)
    if start is not None:
        rows = rows.where(F.col(timestamp_field) >= F.lit(start))
    if end is not None:
        rows = rows.where(F.col(timestamp_field) <= F.lit(end))
    stored = pq.read_schema(path)
    return rows, pa.schema([stored.field(n) for n in names])
