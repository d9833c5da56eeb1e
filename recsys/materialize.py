"""Online materialization by change: every entity whose latest row moved, whatever its time.

Feast's ``materialize_incremental`` pulls only rows stamped after the last end time. The
feature tables are rebuilt from the whole dataset on every run, so a late event (stamped
before the last end) rewrites its user's and item's rows from that time on, and those
rows are never pulled again: the online value would stay stale for good.

Here each run asks the offline store for what ``feast materialize(start, end)`` writes,
the latest row per entity stamped in ``[start, end]`` (ties: latest created timestamp;
Feast's materialization applies no TTL), and compares it in DuckDB with a snapshot of what
the previous run left online (``<data>/feast/online_snapshot/<view>.parquet``): keys,
feature values and event timestamps, never the created timestamp, which every build
changes. Only new or changed entities are written, through the same conversion and
``online_write_batch`` Feast's local materialization engine uses, so the stored bytes equal
a full ``feast materialize``. The snapshot is replaced only after the online write
succeeded: a crash in between makes the next run write those entities again (writes are
upserts), never skip them. A snapshot that does not match the view's schema, or whose
entities are missing online (online store deleted or recreated), is ignored and every
entity is written. Entities that disappear from the tables stay online, as with Feast.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.io import atomic_write_bytes
from recsys.sql import connect, string

log = logging.getLogger(__name__)

# Snapshot keys read back from the online store to check that it still holds what the
# snapshot says was written (a deleted or recreated store means: write everything).
PROBE_KEYS = 16


@dataclass(frozen=True)
class ViewMaterialization:
    """What one view's materialization found and wrote."""

    view: str
    entities: int  # entities with a row in [start, end]
    written: int  # new or changed since the snapshot, written online
    unchanged: int  # same values and event timestamp as online already: not written
    full: bool  # no usable snapshot: every entity written


@dataclass(frozen=True)
class Materialization:
    """One run over several views, ``[start, end]`` as recorded in Feast's registry."""

    start: datetime
    end: datetime
    views: list[ViewMaterialization]

    @property
    def written(self) -> int:
        return sum(v.written for v in self.views)

    @property
    def unchanged(self) -> int:
        return sum(v.unchanged for v in self.views)


def _columns(view: Any) -> tuple[list[str], list[str], str, str | None]:
    source = view.batch_source
    if source.field_mapping:
        raise ValueError(f"feature view {view.name}: sources with a field_mapping unsupported")
    keys = [e.name for e in view.entity_columns]
    features = [f.name for f in view.features]
    return keys, features, source.timestamp_field, source.created_timestamp_column or None


def latest_rows(store: Any, view: Any, start: datetime, end: datetime) -> pa.Table:
    """The rows ``feast materialize(start, end)`` writes: each entity's latest in [start, end]."""
    keys, features, ts, created = _columns(view)
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config, data_source=view.batch_source, join_key_columns=keys,
        feature_name_columns=features, timestamp_field=ts, created_timestamp_column=created,
        start_date=start, end_date=end,
    )  # fmt: skip
    return job.to_arrow().combine_chunks()


def _snapshot_columns(table: pa.Table, view: Any) -> pa.Table:
    keys, features, ts, _ = _columns(view)
    return table.select([*keys, *features, ts])


def changed_rows(table: pa.Table, snapshot: Path, keys: list[str], compared: list[str]) -> pa.Array:
    """Positions of the rows of ``table`` whose ``keys`` are absent from ``snapshot`` or
    differ there in a ``compared`` column (NULL-safe; lists compared element by element)."""
    con = connect()
    positions = pa.array(range(table.num_rows), pa.int64())
    con.register("fresh", table.select([*keys, *compared]).append_column("_row", positions))
    on = " AND ".join(f"f.{_ident(k)} = s.{_ident(k)}" for k in keys)
    differs = " OR ".join(f"f.{_ident(c)} IS DISTINCT FROM s.{_ident(c)}" for c in compared)
    sql = (
        f"SELECT f._row FROM fresh f LEFT JOIN read_parquet({string(str(snapshot))}) s ON {on} "
        f"WHERE s.{_ident(keys[0])} IS NULL OR {differs} ORDER BY f._row"
    )
    return con.sql(sql).to_arrow_table().column(0).combine_chunks()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _usable_snapshot(store: Any, view: Any, path: Path, fresh: pa.Table) -> bool:
    if not path.exists():
        return False
    schema = pq.read_schema(path)
    expected = _snapshot_columns(fresh, view).schema
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        log.warning("online snapshot %s does not match view %s: writing every entity",
                    path, view.name)  # fmt: skip
        return False
    return _snapshot_is_online(store, view, path)


def _snapshot_is_online(store: Any, view: Any, path: Path) -> bool:
    """Whether a sample of the snapshot's entities is in the online store."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values

    keys = [e.name for e in view.entity_columns]
    table = pq.read_table(path, columns=keys)
    if table.num_rows == 0:
        return True
    step = max(1, table.num_rows // PROBE_KEYS)
    sample = table.take(list(range(0, table.num_rows, step))[:PROBE_KEYS])
    types = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    columns = [python_values_to_proto_values(sample.column(k).to_pylist(), types[k]) for k in keys]
    entity_keys = [
        EntityKey(join_keys=keys, entity_values=list(v)) for v in zip(*columns, strict=True)
    ]
    online_store = store._get_provider().online_store
    found = online_store.online_read(store.config, view, entity_keys)
    missing = sum(ts is None for ts, _ in found)
    if missing:
        log.warning("%d of %d sampled entities of %s missing online: writing every entity",
                    missing, len(entity_keys), view.name)  # fmt: skip
    return missing == 0


def write_online(store: Any, view: Any, table: pa.Table) -> None:
    """Rows of the view's source into the online store, converted as Feast's local
    materialization engine does (``LocalOutputNode``)."""
    from feast.utils import _convert_arrow_to_proto

    join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    online_store = store._get_provider().online_store
    size = store.config.materialization_config.online_write_batch_size
    # Feast converts only a table's first chunk: whole batches are passed, one at a time.
    for batch in table.combine_chunks().to_batches(max_chunksize=size):
        rows = _convert_arrow_to_proto(batch, view, join_keys)
        online_store.online_write_batch(store.config, view, rows, progress=None)


def _write_snapshot(table: pa.Table, path: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


def materialize_view(
    store: Any, view_name: str, start: datetime, end: datetime, snapshot_dir: Path
) -> ViewMaterialization:
    """Bring one view's online values to each entity's latest row in [start, end]."""
    view = store.get_feature_view(view_name)
    keys, features, ts, _ = _columns(view)
    fresh = latest_rows(store, view, start, end)
    path = Path(snapshot_dir) / f"{view_name}.parquet"
    full = not _usable_snapshot(store, view, path, fresh)
    rows = fresh if full else fresh.take(changed_rows(fresh, path, keys, [*features, ts]))
    if rows.num_rows:
        write_online(store, view, rows)
    # Only now: a crash before this line leaves the previous snapshot, so the next run
    # writes these entities again.
    _write_snapshot(_snapshot_columns(fresh, view), path)
    result = ViewMaterialization(view_name, fresh.num_rows, rows.num_rows,
                                 fresh.num_rows - rows.num_rows, full)  # fmt: skip
    log.info("online %s: %s", view_name, result)
    return result


def materialize_changes(
    store: Any, views: list[str], start: datetime, end: datetime, snapshot_dir: Path
) -> Materialization:
    """Materialize ``views`` by change, then record ``[start, end]`` in Feast's registry."""
    from feast.utils import make_tzaware

    start, end = make_tzaware(start), make_tzaware(end)
    results = [materialize_view(store, name, start, end, snapshot_dir) for name in views]
    for name in views:
        view = store.get_feature_view(name)
        store.registry.apply_materialization(view, store.project, start, end)
    return Materialization(start, end, results)
