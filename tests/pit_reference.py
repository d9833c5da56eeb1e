"""An independent point-in-time join in pandas (``merge_asof``), to check the DuckDB store's
SQL against: different code, different engine, same semantics (latest row at or before the
entity time, last created wins a tie, null past the TTL)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def pit_join(
    entity: pd.DataFrame, feature_views: list[Any], ts: str = "event_timestamp"
) -> pd.DataFrame:
    """``entity`` with every feature of ``feature_views`` joined as of each row's ``ts``."""
    out = entity.reset_index(drop=True).copy()
    out["_row"] = range(len(out))
    out[ts] = pd.to_datetime(out[ts], utc=True).astype("datetime64[ns, UTC]")
    for fv in feature_views:
        source = fv.batch_source
        key = fv.entity_columns[0].name
        features = [f.name for f in fv.features]
        table = pd.read_parquet(source.path)
        table["_fts"] = table[source.timestamp_field].astype("datetime64[ns, UTC]")
        # Last created wins among rows of one key and event time.
        table = table.sort_values(["_fts", source.created_timestamp_column], kind="stable")
        table = table.drop_duplicates([key, "_fts"], keep="last")[[key, "_fts", *features]]
        out = pd.merge_asof(
            out.sort_values(ts), table.sort_values("_fts"), left_on=ts, right_on="_fts",
            by=key, direction="backward", allow_exact_matches=True,
        )  # fmt: skip
        if fv.ttl and fv.ttl.total_seconds() > 0:
            stale = out["_fts"].isna() | (out["_fts"] < out[ts] - fv.ttl)
            for feature in features:
                out[feature] = out[feature].astype(object).where(~stale, None)
        out = out.drop(columns="_fts")
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def comparable(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Rows sorted by ``key``; lists as tuples, floats rounded to float32 precision, missing
    as None: equal frames compare equal cell by cell whatever engine made them."""

    def cell(v: Any) -> Any:
        if hasattr(v, "__len__") and not isinstance(v, str):
            return tuple(cell(x) for x in v)
        if v is None or (isinstance(v, float) and v != v) or v is pd.NaT:
            return None
        if isinstance(v, float):
            return float(f"{v:.6g}")
        return v.item() if hasattr(v, "item") else v

    frame = frame.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame = frame.sort_values(key, kind="stable", ignore_index=True)
    return frame.astype(object).map(cell).astype(object)


def window_join_sql(entity_sql: str, feature_views: list[Any], ts: str = "event_timestamp") -> str:
    """The same join in DuckDB without ASOF JOIN, for sizes pandas cannot hold: entity rows
    and feature rows in one union, ordered by time per key (a feature row before an entity
    row at the same time), and each entity row takes ``last_value(... IGNORE NULLS)``."""
    from recsys.sql import string

    selects, joins = ["e.* EXCLUDE (_row)"], []
    for k, fv in enumerate(feature_views):
        source = fv.batch_source
        key = fv.entity_columns[0].name
        features = [f.name for f in fv.features]
        packed = ", ".join(f"{f} := {f}" for f in features)
        ttl = fv.ttl.total_seconds() if fv.ttl and fv.ttl.total_seconds() > 0 else None
        table = f"""(SELECT * FROM read_parquet({string(source.path)})
                     QUALIFY row_number() OVER (PARTITION BY {key}, {source.timestamp_field}
                             ORDER BY {source.created_timestamp_column} DESC) = 1)"""
        joins.append(f"""LEFT JOIN (
            SELECT _row, last_value(_v IGNORE NULLS) OVER (PARTITION BY _k ORDER BY _t, _side
                   ROWS UNBOUNDED PRECEDING) AS _v, _t
            FROM (SELECT _row, {key} AS _k, {ts}::TIMESTAMPTZ AS _t, 1 AS _side, NULL AS _v
                  FROM numbered
                  UNION ALL
                  SELECT NULL, {key}, {source.timestamp_field}::TIMESTAMPTZ, 0,
                         struct_pack(_fts := {source.timestamp_field}::TIMESTAMPTZ, {packed})
                  FROM {table})
            QUALIFY _side = 1) j{k} ON j{k}._row = e._row""")
        for f in features:
            fresh = (
                "true"
                if ttl is None
                else f"j{k}._v._fts >= j{k}._t - to_microseconds({int(ttl * 1e6)})"
            )
            selects.append(f"CASE WHEN {fresh} THEN j{k}._v.{f} END AS {f}")
    return (
        f"WITH numbered AS MATERIALIZED (SELECT row_number() OVER () AS _row, * FROM ({entity_sql})) "
        f"SELECT {', '.join(selects)} FROM numbered e {' '.join(joins)}"
    )
