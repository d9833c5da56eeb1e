"""Point-in-time joins as DuckDB ``ASOF JOIN``s: the SQL of the project's Feast offline store
(``recsys.offline_store``) and the "raw ASOF JOIN" baseline of the benchmarks.

Semantics (Feast's): for an entity row at time t and each feature view, take the view's row
with the same key and the latest ``event_timestamp <= t``; among rows with equal event
timestamps the latest ``created_timestamp`` wins; if that row is older than ``t - ttl`` (for
a view with a TTL) the features are null. One ASOF JOIN per view: DuckDB sorts both sides and
merges, so the cost is O(n log n) in the rows, whatever the number of rows per key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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


def view_spec(
    fv: Any, features: list[str] | None = None, full_names: bool = False, scan: str | None = None
) -> ViewSpec:
    """A spec from a Feast ``FeatureView`` whose batch source is a parquet ``FileSource``.

    ``features`` limits the view to those feature names; ``full_names`` outputs
    ``<view>__<feature>`` as Feast's ``full_feature_names`` does; ``scan`` replaces the
    default ``read_parquet`` of the source path.
    """
    source = fv.batch_source
    # field_mapping renames source columns to feature / key names.
    to_source = {new: old for old, new in (source.field_mapping or {}).items()}
    key_map = fv.projection.join_key_map or {}
    keys = tuple(
        (key_map.get(c.name, c.name), to_source.get(c.name, c.name)) for c in fv.entity_columns
    )
    wanted = [f.name for f in fv.features if features is None or f.name in features]
    view_name = fv.projection.name_to_use()
    return ViewSpec(
        name=fv.name,
        scan=scan or f"read_parquet({string(source.path)})",
        join_keys=keys,
        features=tuple(
            (to_source.get(f, f), f"{view_name}__{f}" if full_names else f) for f in wanted
        ),
        ttl=fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None,
        timestamp_field=source.timestamp_field,
        created_column=source.created_timestamp_column or None,
    )


def view_specs(feature_views: list[Any]) -> list[ViewSpec]:
    return [view_spec(fv) for fv in feature_views]


def _right_side(spec: ViewSpec, alias: str) -> str:
    keys = [source for _, source in spec.join_keys]
    columns = ", ".join(
        [f"{k} AS {alias}_k{i}" for i, k in enumerate(keys)]
        + [f"{col} AS {alias}_f{i}" for i, (col, _) in enumerate(spec.features)]
        + [f"{spec.timestamp_field}::TIMESTAMPTZ AS {alias}_ts"]
    )
    if not spec.created_column:
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
    """SQL joining the rows of ``entity_sql`` with every view, as of each row's ``timestamp``."""
    selects, joins = ["e.*"], []
    for k, spec in enumerate(specs):
        alias = f"v{k}"
        on = [f"e.{entity} = {alias}_k{i}" for i, (entity, _) in enumerate(spec.join_keys)]
        joins.append(
            f"ASOF LEFT JOIN {_right_side(spec, alias)} "
            f"ON {' AND '.join(on)} AND e.{timestamp}::TIMESTAMPTZ >= {alias}_ts"
        )
        for i, (_, output) in enumerate(spec.features):
            value = f"{alias}_f{i}"
            if spec.ttl is not None:
                micros = int(spec.ttl.total_seconds() * 1_000_000)
                fresh = f"{alias}_ts >= e.{timestamp}::TIMESTAMPTZ - to_microseconds({micros})"
                value = f"CASE WHEN {fresh} THEN {value} END"
            selects.append(f'{value} AS "{output}"')
    return f"SELECT {', '.join(selects)} FROM ({entity_sql}) e {' '.join(joins)}"
