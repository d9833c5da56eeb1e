"""A point-in-time join written directly as DuckDB ``ASOF JOIN``s: the reference Feast's
training set is checked against, and the baseline the benchmarks compare it with.

Semantics (Feast's): for an entity row at time t and each feature view, take the view's
row with the same key and the latest ``event_timestamp <= t``; among rows with equal
``event_timestamp`` the latest ``created_timestamp`` wins; if that row is older than
``t - ttl`` (for a view with a TTL) the features are null.
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
    path: str
    join_key: str
    features: tuple[str, ...]
    ttl: timedelta | None  # None or zero: never expires
    created_column: str | None = "created_timestamp"


def view_specs(feature_views: list[Any]) -> list[ViewSpec]:
    """Specs from Feast ``FeatureView`` objects (their sources must be parquet files)."""
    return [
        ViewSpec(
            name=fv.name,
            path=fv.batch_source.path,
            join_key=fv.entity_columns[0].name,
            features=tuple(f.name for f in fv.features),
            ttl=fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None,
            created_column=fv.batch_source.created_timestamp_column or None,
        )
        for fv in feature_views
    ]


def _latest_per_timestamp(spec: ViewSpec, alias: str) -> str:
    columns = ", ".join((spec.join_key, *spec.features))
    scan = f"read_parquet({string(spec.path)})"
    tie_break = (
        f"QUALIFY row_number() OVER (PARTITION BY {spec.join_key}, event_timestamp "
        f"ORDER BY {spec.created_column} DESC) = 1"
        if spec.created_column
        else ""
    )
    return f"(SELECT {columns}, event_timestamp AS {alias}_ts FROM {scan} {tie_break}) {alias}"


def asof_join_sql(
    entity_sql: str, specs: list[ViewSpec], timestamp: str = "event_timestamp"
) -> str:
    """SQL joining the rows of ``entity_sql`` with every view, as of each row's timestamp."""
    selects, joins = ["e.*"], []
    for k, spec in enumerate(specs):
        alias = f"v{k}"
        joins.append(
            f"ASOF LEFT JOIN {_latest_per_timestamp(spec, alias)} "
            f"ON e.{spec.join_key} = {alias}.{spec.join_key} AND e.{timestamp} >= {alias}_ts"
        )
        for feature in spec.features:
            if spec.ttl is None:
                selects.append(f"{alias}.{feature}")
            else:
                micros = int(spec.ttl.total_seconds() * 1_000_000)
                fresh = f"{alias}_ts >= e.{timestamp} - to_microseconds({micros})"
                selects.append(f"CASE WHEN {fresh} THEN {alias}.{feature} END AS {feature}")
    return f"SELECT {', '.join(selects)} FROM ({entity_sql}) e {' '.join(joins)}"
