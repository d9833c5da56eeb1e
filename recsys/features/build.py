"""Feature tables: from the canonical dataset to one parquet time series per view of the
catalogue, computed by the settings' offline engine (DuckDB, or Spark through
`recsys.spark.features`) with the SQL rendered from the declarations
(`recsys.features.render`), plus a manifest of what the build used."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.features.catalog import CATALOG
from recsys.features.ops import Params, TrailingCount
from recsys.features.render import view_sqls
from recsys.features.spec import Catalog
from recsys.io import atomic_write_json, staging_dir
from recsys.settings import Settings
from recsys.sql import connect, one, parquet, string

log = logging.getLogger(__name__)

ONE_US = timedelta(microseconds=1)


def _windows(catalog: Catalog) -> list[int]:
    """The trailing windows (days) of the catalogue's item-event features."""
    return [f.op.days for f in catalog.features("item") if isinstance(f.op, TrailingCount)]


@dataclass(frozen=True)
class FeatureManifest:
    """What a feature build used and produced; written beside the tables."""

    as_of: datetime
    built_at: datetime
    genres: list[str]
    recent_items: int
    popularity_windows_days: list[int] = field(default_factory=lambda: _windows(CATALOG))
    rows: dict[str, int] = field(default_factory=dict)
    # The published dataset version the tables were computed from (its folder's name behind
    # the ``dataset`` link): what the training set checks before it reads them.
    dataset_version: str = ""


def default_as_of(dataset_dir: Path) -> datetime:
    """Just after the last event, or the last user or item version when one is newer (a
    profile that arrived after the last event), so that every event and version is visible
    and materialized."""
    con = connect()
    (last,) = one(con, f"SELECT max(event_timestamp) FROM {parquet(dataset_dir, 'interactions')}")
    if last is None:
        raise ValueError(f"{dataset_dir}/interactions.parquet has no events")
    for table in ("users", "items"):  # the current rows hold each entity's latest version
        if "valid_from" in pq.read_schema(Path(dataset_dir) / f"{table}.parquet").names:
            (latest,) = one(con, f"SELECT max(valid_from) FROM {parquet(dataset_dir, table)}")
            last = max(last, latest) if latest is not None else last
    return last + ONE_US


def genre_vocabulary(dataset: Path) -> list[str]:
    """Every genre of every item version (current and superseded), sorted."""
    con = connect()
    tables = ["items"] + (["items_history"] if (dataset / "items_history.parquet").exists() else [])
    scans = " UNION ALL ".join(f"SELECT genres FROM {parquet(dataset, t)}" for t in tables)
    rows = con.execute(f"SELECT DISTINCT unnest(genres) AS g FROM ({scans}) ORDER BY g").fetchall()
    return [r[0] for r in rows if r[0] is not None]


# Interactions per partition of the event-derived views: each partition's windows and list
# aggregates fit in a few GB, which DuckDB cannot spill for list aggregates.
EVENTS_PER_PART = 5_000_000


def compute_features(
    dataset: Path,
    out_dir: Path,
    *,
    as_of: datetime | None = None,
    recent_items: int = 20,
    built_at: datetime | None = None,
    memory_limit: str | None = None,
    catalog: Catalog = CATALOG,
    settings: Settings | None = None,
) -> FeatureManifest:
    """Write a table per view of ``catalog`` from ``dataset`` into ``out_dir`` (an existing
    folder), on the offline engine of ``settings`` (None: DuckDB).

    On DuckDB the event-derived views partition every window by user or by item, so they are
    computed in hash partitions of that key (one per ``EVENTS_PER_PART`` interactions), each
    written sorted by key and time and streamed into the view's single parquet file. Spark
    spills on its own and runs each view's query whole.
    """
    as_of = as_of or default_as_of(dataset)
    built_at = built_at or datetime.now(UTC)
    genres = genre_vocabulary(dataset)
    con = connect(memory_limit)
    con.execute("SET preserve_insertion_order = false")  # lets DuckDB stream and spill
    spark = settings is not None and settings.engine == "spark"
    (events,) = one(con, f"SELECT count(*) FROM {parquet(dataset, 'interactions')}")
    parts = 1 if spark else max(1, -(-events // EVENTS_PER_PART))
    params = Params(tuple(genres), recent_items)
    queries = {
        view.name: view_sqls(view, dataset, as_of, built_at, params, parts)
        for view in catalog.views
    }
    if settings is not None and spark:
        rows = _spark_tables(settings, catalog, queries, Path(out_dir))
    else:
        rows = _duckdb_tables(con, catalog, queries, Path(out_dir))
    manifest = FeatureManifest(
        as_of, built_at, genres, recent_items, _windows(catalog), rows, dataset_version(dataset)
    )
    atomic_write_json(Path(out_dir) / "manifest.json", asdict(manifest))
    return manifest


def _duckdb_tables(
    con: Any, catalog: Catalog, queries: dict[str, list[str]], out_dir: Path
) -> dict[str, int]:
    rows = {}
    for view, sqls in queries.items():
        key = catalog.view(view).key
        files = []
        for k, sql in enumerate(tqdm(sqls, desc=view, disable=None, leave=False)):
            files.append(out_dir / f".{view}.part{k}.parquet")
            con.execute(
                f"COPY (SELECT * FROM ({sql}) ORDER BY {key}, event_timestamp) "
                f"TO {string(str(files[-1]))} (FORMAT parquet, COMPRESSION zstd)"
            )
        rows[view] = _concat(files, out_dir / f"{view}.parquet")
        log.info("feature view %s: %d rows", view, rows[view])
    return rows


def _spark_tables(
    settings: Settings, catalog: Catalog, queries: dict[str, list[str]], out_dir: Path
) -> dict[str, int]:
    from recsys.spark.features import write_view
    from recsys.spark.session import spark_session

    spark = spark_session(settings)
    rows = {}
    for view, (sql,) in queries.items():
        rows[view] = write_view(spark, catalog.view(view), sql, out_dir / f"{view}.parquet")
        log.info("feature view %s: %d rows (spark)", view, rows[view])
    return rows


def _concat(parts: list[Path], out: Path) -> int:
    """Stream parquet parts into one file, batch by batch; remove the parts."""
    if len(parts) == 1:
        parts[0].rename(out)
        return pq.ParquetFile(out).metadata.num_rows
    schema = pq.read_schema(parts[0])
    rows = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=256_000):
                writer.write_batch(batch)
                rows += batch.num_rows
            part.unlink()
    return rows


def dataset_version(dataset: Path) -> str:
    """The id of the published dataset version behind the ``dataset`` link (`recsys.io`)."""
    return Path(dataset).resolve().name


def build_features(
    dataset: Path, features_dir: Path, data_dir: Path, **kwargs: object
) -> FeatureManifest:
    """Compute the feature tables in a staging folder, audit them there
    (`recsys.audit.audit_features`: the blocking checks) and publish them atomically.

    A failed audit raises :class:`recsys.audit.AuditFailed`: the published tables stay as they
    were, and the rejected ones are kept under ``<data>/rejected/`` with the report."""
    from recsys.audit import AuditFailed, audit_features, publish_audited

    with staging_dir(data_dir, "features") as stage:
        manifest = compute_features(dataset, stage, **kwargs)  # type: ignore[arg-type]
        audit = publish_audited(stage, features_dir, data_dir, audit_features)
    if not audit.passed:
        raise AuditFailed(audit)
    return manifest
