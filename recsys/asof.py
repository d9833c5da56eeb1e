"""Point-in-time joins as DuckDB ``ASOF JOIN``s: the SQL of the project's Feast offline store
(``recsys.offline_store``) and the "raw ASOF JOIN" baseline of the benchmarks.

Semantics (Feast's): for an entity row at time t and each feature view, take the view's row
with the same key and the latest ``event_timestamp <= t``; among rows with equal event
timestamps the latest ``created_timestamp`` wins; if that row is older than ``t - ttl`` (for
a view with a TTL) the features are null. One ASOF JOIN per view: DuckDB sorts both sides and
merges, so the cost is O(n log n) in the rows, whatever the number of rows per key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from feast.types import Array

from recsys.sql import string


@dataclass(frozen=True)
class ViewSpec:
    """What the join needs of one feature view."""

    name: str
    scan: str  # a SQL table expression, e.g. read_parquet('…')
    join_keys: tuple[tuple[str, str], ...]  # (entity column, source column)
    features: tuple[tuple[str, str], ...]  # (source column, output column)
    ttl: timedelta | None  # None: never expires
    timestamp_field: str = "event_timestamp"
    created_column: str | None = "created_timestamp"
    # One local parquet file whose features are wide (lists): the ASOF JOIN then carries only
    # each match's row number, and the features are fetched once at the end by that number.
    late_path: str | None = None
    late_rows: int = 0  # rows of that file
    # Whether rows may tie on (key, event time) with different created timestamps; False
    # skips the tie-break (see ``without_needless_tiebreaks``).
    ties: bool = True


def view_spec(
    fv: Any, features: list[str] | None = None, full_names: bool = False, path: str | None = None
) -> ViewSpec:
    """A spec from a Feast ``FeatureView`` whose batch source is a parquet ``FileSource``.

    ``features`` limits the view to those feature names; ``full_names`` outputs
    ``<view>__<feature>`` as Feast's ``full_feature_names`` does; ``path`` replaces the
    source's path (e.g. resolved against the repository).
    """
    source = fv.batch_source
    path = path or source.path
    # field_mapping renames source columns to feature / key names.
    to_source = {new: old for old, new in (source.field_mapping or {}).items()}
    key_map = fv.projection.join_key_map or {}
    keys = tuple(
        (key_map.get(c.name, c.name), to_source.get(c.name, c.name)) for c in fv.entity_columns
    )
    wanted = [f for f in fv.features if features is None or f.name in features]
    view_name = fv.projection.name_to_use()
    late = any(isinstance(f.dtype, Array) for f in wanted) and Path(path).is_file()
    return ViewSpec(
        name=fv.name,
        scan=f"read_parquet({string(path)})",
        join_keys=keys,
        features=tuple(
            (to_source.get(f.name, f.name), f"{view_name}__{f.name}" if full_names else f.name)
            for f in wanted
        ),
        ttl=fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None,
        timestamp_field=source.timestamp_field,
        created_column=source.created_timestamp_column or None,
        late_path=path if late else None,
        late_rows=pq.ParquetFile(path).metadata.num_rows if late else 0,
    )


# Connection settings the SQL of ``asof_join_sql`` is written for. DuckDB makes the smaller
# side of a hash join (by its estimate) the build side, but its estimates after ASOF JOINs
# are far off (at 50M entity rows it took the 147M rows of one view for the joined rows and
# built the hash table on the 50M rows of lists instead, spilling tens of GB): the SQL
# states each build side itself (the right-hand side of every join).
CONNECTION_SETTINGS = ("SET disabled_optimizers = 'build_side_probe_side'",)
# A late-fetched view with at least this many rows is fetched by a hash table over the
# joined entity rows (the view's rows then stream past it); a smaller one is the hash table.
BIG_VIEW_ROWS = 1_000_000


def prepare(con: Any) -> Any:
    """``con`` with :data:`CONNECTION_SETTINGS` applied."""
    for statement in CONNECTION_SETTINGS:
        con.execute(statement)
    return con


def view_specs(feature_views: list[Any]) -> list[ViewSpec]:
    return [view_spec(fv) for fv in feature_views]


def without_needless_tiebreaks(con: Any, specs: list[ViewSpec]) -> list[ViewSpec]:
    """The specs, marked tie-free where every created timestamp is one and the same value.

    Rows that share a key and event time then tie on created time too, and any of them is a
    correct answer (Feast's own join picks one arbitrarily): the tie-break, a hash aggregate
    over every row of the view, can go. Feature tables written in one run look like this.
    """
    out = []
    for spec in specs:
        c = spec.created_column
        if c:
            single = con.execute(
                f"SELECT count(*) = 0 OR (min({c}) = max({c}) AND count({c}) = count(*)) "
                f"FROM {spec.scan}"
            ).fetchone()[0]
            spec = replace(spec, ties=not single)
        out.append(spec)
    return out


def _tiebreak(spec: ViewSpec) -> bool:
    return spec.created_column is not None and spec.ties


def _right_side(spec: ViewSpec, alias: str) -> str:
    """The view's rows for the ASOF JOIN: keys ``{alias}_k*``, time ``{alias}_ts``, and
    either the features ``{alias}_f*`` or (late fetch) the row number ``{alias}_rn``."""
    keys = [source for _, source in spec.join_keys]
    head = [f"{k} AS {alias}_k{i}" for i, k in enumerate(keys)] + [
        f"{spec.timestamp_field}::TIMESTAMPTZ AS {alias}_ts"
    ]
    if spec.late_path:
        # Narrow rows: the ASOF JOIN sorts them, so the fewer bytes the better.
        scan = f"read_parquet({string(spec.late_path)}, file_row_number = true)"
        if not _tiebreak(spec):
            return f"(SELECT {', '.join(head)}, file_row_number AS {alias}_rn FROM {scan}) {alias}"
        latest = f"coalesce({spec.created_column}, '-infinity'::TIMESTAMPTZ)"
        return (
            f"(SELECT {', '.join(head)}, arg_max(file_row_number, {latest}) AS {alias}_rn "
            f"FROM {scan} GROUP BY ALL) {alias}"
        )
    columns = ", ".join(
        head + [f"{col} AS {alias}_f{i}" for i, (col, _) in enumerate(spec.features)]
    )
    if not _tiebreak(spec):
        return f"(SELECT {columns} FROM {spec.scan}) {alias}"
    # Among rows of one key and event time the last created wins: keep only that row. The
    # latest created timestamp per (key, time) is found on those narrow columns alone (a
    # hash aggregate), and the wide rows stream through a semi join against it: no window
    # over the feature columns, which DuckDB would have to hold in memory.
    group = ", ".join([*keys, spec.timestamp_field])
    latest = f"SELECT {group}, max({spec.created_column}) AS _created FROM {spec.scan} GROUP BY ALL"
    match = " AND ".join(
        [f"w.{c} IS NOT DISTINCT FROM l.{c}" for c in [*keys, spec.timestamp_field]]
        + [f"w.{spec.created_column} IS NOT DISTINCT FROM l._created"]
    )
    return f"(SELECT {columns} FROM {spec.scan} w SEMI JOIN ({latest}) l ON {match}) {alias}"


def asof_join_sql(
    entity_sql: str, specs: list[ViewSpec], timestamp: str = "event_timestamp"
) -> str:
    """SQL joining the rows of ``entity_sql`` with every view, as of each row's ``timestamp``.

    Views with narrow features carry them through their ASOF JOIN. Views with wide ones
    (``late_path``) carry a row number instead, and their features are fetched after every
    ASOF JOIN is done, so no sort ever moves the lists: one hash join by row number each,
    small views first, and big ones last with the hash table on the entity side. Run it on a
    connection set up by :func:`prepare`.
    """
    helpers: list[str] = []
    joins: list[str] = []
    selects: list[str] = []
    fetches: list[tuple[int, int, str, str]] = []  # (view rows, k, view scan, condition)
    for k, spec in enumerate(specs):
        a = f"v{k}"
        on = [f"e.{entity} = {a}_k{i}" for i, (entity, _) in enumerate(spec.join_keys)]
        joins.append(
            f"ASOF LEFT JOIN {_right_side(spec, a)} "
            f"ON {' AND '.join(on)} AND e.{timestamp}::TIMESTAMPTZ >= {a}_ts"
        )
        helpers.append(f"{a}_ts")
        if spec.late_path:
            helpers.append(f"{a}_rn")
            columns = ", ".join(f"{col} AS {a}_f{i}" for i, (col, _) in enumerate(spec.features))
            scan = f"read_parquet({string(spec.late_path)}, file_row_number = true)"
            fetches.append((spec.late_rows, k, f"(SELECT file_row_number AS {a}_row, {columns} "
                            f"FROM {scan}) w{k}", f"j.{a}_rn = w{k}.{a}_row"))  # fmt: skip
        else:
            helpers += [f"{a}_f{i}" for i in range(len(spec.features))]
        for i, (_, output) in enumerate(spec.features):
            value = f"{a}_f{i}"
            if spec.ttl is not None:
                micros = int(spec.ttl.total_seconds() * 1_000_000)
                fresh = f"j.{a}_ts >= j.{timestamp}::TIMESTAMPTZ - to_microseconds({micros})"
                value = f"CASE WHEN {fresh} THEN {value} END"
            selects.append(f'{value} AS "{output}"')
    inner = f"SELECT e.*, {', '.join(helpers)} FROM ({entity_sql}) e {' '.join(joins)}"
    body = f"({inner}) j"
    for rows, _, view, condition in sorted(fetches):
        if rows >= BIG_VIEW_ROWS:  # the rows joined so far are the hash table
            body = f"{view} RIGHT JOIN ({body}) ON {condition}"
        else:  # the view is the hash table
            body = f"{body} LEFT JOIN {view} ON {condition}"
    return f"SELECT j.* EXCLUDE ({', '.join(helpers)}), {', '.join(selects)} FROM {body}"
