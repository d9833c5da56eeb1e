"""A Feast offline store whose point-in-time joins are DuckDB ``ASOF JOIN``s.

Plugged in by dotted path in ``feature_store.yaml``::

    offline_store:
      type: recsys.offline_store.DuckDBAsofOfflineStore
      memory_limit: 4GB   # optional: DuckDB spills to disk past it

Feast's stock DuckDB store (``type: duckdb``, still selectable) builds its join in ibis as a
range join followed by a window dedup: rows per key multiply, and on skewed data it passes
16 GB at 100K interactions (``benchmarks/bench_training_set.py``). Here each feature view is
one ASOF JOIN (sort-merge, ``recsys.asof``), the result streams out of DuckDB as Arrow batches
or straight to parquet, and pandas is never involved unless asked for.

``get_historical_features`` accepts the entity rows as a pandas DataFrame, a parquet path
(file, folder or glob), a SQL query, an Arrow table or record-batch reader, or a DuckDB
relation. The materialization pulls (``pull_latest_from_table_or_query``,
``pull_all_from_table_or_query``) run in DuckDB too. Sources other than parquet
``FileSource``s fall back to the stock store.
"""

from __future__ import annotations

import os
import uuid
from abc import abstractmethod
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
from feast.data_source import DataSource
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import StrictStr

from recsys.asof import asof_join_sql, prepare, view_spec, without_needless_tiebreaks
from recsys.sql import string, timestamp


class DuckDBAsofOfflineStoreConfig(FeastConfigBaseModel):
    """Settings of :class:`DuckDBAsofOfflineStore` (the ``offline_store`` block)."""

    type: StrictStr = "recsys.offline_store.DuckDBAsofOfflineStore"
    # DuckDB memory limit, e.g. "4GB"; past it sorts and joins spill to temp_directory.
    memory_limit: str | None = None
    # Worker threads; None uses every core.
    threads: int | None = None
    # Where spilled data goes; None uses DuckDB's default (.tmp beside the database).
    temp_directory: str | None = None


def _connect(config: RepoConfig) -> duckdb.DuckDBPyConnection:
    store = config.offline_store
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Row order is unspecified (as in every Feast store); not keeping it lets DuckDB stream.
    con.execute("SET preserve_insertion_order = false")
    for name in ("memory_limit", "threads", "temp_directory"):
        value = getattr(store, name, None)
        if value is not None:
            con.execute(f"SET {name} = {string(str(value))}")
    return con


def _is_parquet_file_source(source: DataSource) -> bool:
    if not isinstance(source, FileSource):
        return False
    fmt = source.file_format
    return (fmt is None and source.path.endswith(".parquet")) or type(
        fmt
    ).__name__ == "ParquetFormat"


class _EntityRows:
    """The entity rows as a table expression on one connection, whatever form they came in."""

    def __init__(self, con: duckdb.DuckDBPyConnection, entity_df: Any) -> None:
        name = f"entity_{uuid.uuid4().hex[:8]}"
        if isinstance(entity_df, pd.DataFrame | pa.Table | pa.RecordBatchReader):
            con.register(name, entity_df)
            self.sql = f"SELECT * FROM {name}"
        elif isinstance(entity_df, duckdb.DuckDBPyRelation):
            con.register(name, entity_df.to_arrow_table())
            self.sql = f"SELECT * FROM {name}"
        elif isinstance(entity_df, Path) or (
            isinstance(entity_df, str) and _looks_like_path(entity_df)
        ):
            self.sql = f"SELECT * FROM read_parquet({string(str(entity_df))})"
        elif isinstance(entity_df, str):
            self.sql = entity_df  # a SQL query, as Feast's SQL stores accept
        else:
            raise TypeError(
                f"entity_df of type {type(entity_df).__name__} is not supported: pass a pandas "
                "DataFrame, a parquet path, a SQL query, an Arrow table or a DuckDB relation"
            )
        described = con.execute(f"DESCRIBE {self.sql}").fetchall()
        self.columns = {row[0]: row[1] for row in described}
        self.timestamp = _timestamp_column(self.columns)


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return (" " not in stripped and stripped.endswith(".parquet")) or os.path.exists(stripped)


def _timestamp_column(columns: dict[str, str]) -> str:
    if "event_timestamp" in columns:
        return "event_timestamp"
    stamps = [c for c, t in columns.items() if t.startswith("TIMESTAMP") or t == "DATE"]
    if len(stamps) != 1:
        raise ValueError(
            f"entity rows need one timestamp column (or one named event_timestamp); "
            f"found {stamps or 'none'} among {list(columns)}"
        )
    return stamps[0]


class ParquetRetrievalJob(RetrievalJob):
    """Feast's plumbing shared by this project's retrieval jobs (DuckDB's, Spark's): the
    feature-name mode, no on-demand views, ``persist`` as a parquet file, lazy metadata.
    A subclass runs the query: ``_to_arrow_internal``, ``_to_df_internal``, ``to_parquet``."""

    def __init__(self, full_feature_names: bool = False, metadata_fn: Any = None) -> None:
        self._full_feature_names = full_feature_names
        self._metadata_fn = metadata_fn

    @abstractmethod
    def to_parquet(self, path: str | Path) -> Path: ...

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list:
        return []

    def persist(
        self, storage: Any, allow_overwrite: bool = False, timeout: int | None = None
    ) -> None:
        target = Path(storage.file_options.uri)
        if target.exists() and not allow_overwrite:
            from feast.errors import SavedDatasetLocationAlreadyExists

            raise SavedDatasetLocationAlreadyExists(location=str(target))
        self.to_parquet(target)

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata_fn() if self._metadata_fn else None


class DuckDBRetrievalJob(ParquetRetrievalJob):
    """A query not yet run: to Arrow, to pandas, as Arrow batches, or streamed to parquet."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        sql: str,
        full_feature_names: bool = False,
        metadata_fn: Any = None,
    ) -> None:
        super().__init__(full_feature_names, metadata_fn)
        self.con, self.sql = con, sql

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self.con.sql(self.sql).to_arrow_table()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self.con.sql(self.sql).df()

    def to_arrow_batches(self, batch_size: int = 1_000_000) -> pa.RecordBatchReader:
        """The result as a stream of Arrow record batches (bounded memory)."""
        return self.con.sql(self.sql).to_arrow_reader(batch_size)

    def to_parquet(self, path: str | Path) -> Path:
        """Stream the result into a parquet file, written to a temp name then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            self.con.execute(
                f"COPY ({self.sql}) TO {string(str(tmp))} (FORMAT parquet, COMPRESSION zstd)"
            )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def to_sql(self) -> str:
        return self.sql


class DuckDBAsofOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB store with ASOF-JOIN point-in-time joins and DuckDB materialization pulls."""

    supports_filter_by_created_timestamp = True  # through the stock join

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[Any],
        feature_refs: list[str],
        entity_df: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        # The created-timestamp cutoff is not an ASOF condition; the stock join handles it.
        if (
            entity_df is None
            or filter_by_created_timestamp
            or not all(_is_parquet_file_source(fv.batch_source) for fv in feature_views)
        ):
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names, filter_by_created_timestamp,
            )  # fmt: skip
        con = _connect(config)
        entity = _EntityRows(con, entity_df)
        wanted: dict[str, list[str]] = {}
        for ref in feature_refs:
            view, feature = ref.split(":", 1)
            wanted.setdefault(view, []).append(feature)
        specs = [
            view_spec(
                fv,
                wanted.get(fv.projection.name_to_use(), []),
                full_feature_names,
                path=_source_path(fv.batch_source, config.repo_path),
            )
            for fv in feature_views
        ]
        specs = without_needless_tiebreaks(prepare(con), specs)
        for spec in specs:
            missing = [e for e, _ in spec.join_keys if e not in entity.columns]
            if missing:
                raise ValueError(
                    f"entity rows lack the join key(s) {missing} of feature view '{spec.name}'"
                )
        sql = asof_join_sql(entity.sql, specs, entity.timestamp)

        def metadata() -> RetrievalMetadata:
            low, high = con.execute(
                f"SELECT min({entity.timestamp}), max({entity.timestamp}) FROM ({entity.sql})"
            ).fetchone() or (None, None)
            keys = [c for c in entity.columns if c != entity.timestamp]
            return RetrievalMetadata(
                features=feature_refs, keys=keys, min_event_timestamp=low, max_event_timestamp=high
            )

        return DuckDBRetrievalJob(con, sql, full_feature_names, metadata)

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        if not _is_parquet_file_source(data_source):
            return DuckDBOfflineStore.pull_latest_from_table_or_query(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date,
            )  # fmt: skip
        order = f"{timestamp_field} DESC" + (
            f", {created_timestamp_column} DESC" if created_timestamp_column else ""
        )
        sql = _pull_sql(
            config.repo_path, data_source, join_key_columns, feature_name_columns, timestamp_field,
            created_timestamp_column, start_date, end_date,
        ) + f" QUALIFY row_number() OVER (PARTITION BY {', '.join(join_key_columns)} ORDER BY {order}) = 1"  # fmt: skip
        return DuckDBRetrievalJob(_connect(config), sql)

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        if not _is_parquet_file_source(data_source):
            return DuckDBOfflineStore.pull_all_from_table_or_query(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date,
            )  # fmt: skip
        sql = _pull_sql(
            config.repo_path, data_source, join_key_columns, feature_name_columns, timestamp_field,
            created_timestamp_column, start_date, end_date,
        )  # fmt: skip
        return DuckDBRetrievalJob(_connect(config), sql)


def _source_path(source: Any, repo_path: Any) -> str:
    """The parquet path of a FileSource, resolved against the feature repository."""
    return str(FileSource.get_uri_for_file_path(repo_path, source.path))


def _scan(source: Any, repo_path: Any) -> str:
    return f"read_parquet({string(_source_path(source, repo_path))})"


def _pull_sql(
    repo_path: Any,
    source: Any,
    keys: list[str],
    features: list[str],
    timestamp_field: str,
    created: str | None,
    start: datetime | None,
    end: datetime | None,
) -> str:
    """Rows of a parquet source in [start, end]. Feast passes source column names here."""
    names = [*keys, *features, timestamp_field] + ([created] if created else [])
    columns = ", ".join(f'"{n}"' for n in dict.fromkeys(names))
    where = []
    if start is not None:
        where.append(f"{timestamp_field}::TIMESTAMPTZ >= {timestamp(start)}")
    if end is not None:
        where.append(f"{timestamp_field}::TIMESTAMPTZ <= {timestamp(end)}")
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {columns} FROM {_scan(source, repo_path)} {condition}"
