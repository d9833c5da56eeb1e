"""The DuckDB SQL of each view, rendered from its declaration: one template per kind of view
(`recsys.features.spec.ViewKind`), the select list from the features' ops.

The invariant every table keeps: **a value visible at time t is computed only from events
with timestamp strictly before t.** Feast's point-in-time join picks, for an entity row at
t, the latest feature row stamped ``<= t``. So a value that includes the events of second
``ts`` is stamped ``ts + 1 µs`` (timestamps are microseconds, the finest unit stored): an
entity row at ``ts`` itself sees only the value before, never the events it shares a
timestamp with (on MovieLens-100K 75% of ratings share their (user, second) with another).

- ``STATIC``: one row per version of each entity of its table (the current row and the
  superseded ones of ``<table>_history.parquet``), stamped at its ``valid_from``: never derived
  from events, so a training row at t sees the version in force at t. A dataset published
  before versions were recorded (no ``valid_from``) has one row per entity at the epoch.
- ``USER_EVENTS``: one row per (user, distinct event time), stamped ``ts + 1 µs``: each
  (user, second) group is aggregated first, so ties enter a value together. An event's item
  attributes (its genres) are those of the item's version in force at the event.
- ``ITEM_EVENTS``: a trailing count changes when an event enters the window and again when
  it leaves, so each event adds a row at ``ts + 1 µs`` and takes it back at
  ``ts + window + 1 µs``; running sums give exact values at every change point (window =
  events in ``[t - window, t)``).

Every table also carries ``created_timestamp`` (the build time), which Feast uses to break
ties between rows with the same entity and event timestamp.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from recsys.features.ops import EPOCH, Delta, Params
from recsys.features.spec import View, ViewKind
from recsys.sql import parquet, timestamp

# The dataset table each entity's static attributes live in.
ENTITY_TABLES = {"user": "users", "item": "items"}


def _part(key: str, part: tuple[int, int]) -> str:
    """The rows of one hash partition of the entity key: ``(k, of)`` is part k of `of`."""
    k, of = part
    return f"AND hash({key}) % {of} = {k}" if of > 1 else ""


def _versions(dataset: Path, table: str) -> str | None:
    """Every version of ``table`` (current ∪ history) as a subquery, or None when the dataset
    has no history of it."""
    from recsys.schema import HISTORY, TABLES

    if not (Path(dataset) / f"{HISTORY[table]}.parquet").exists():
        return None
    columns = ", ".join(TABLES[table].names)
    return (f"(SELECT {columns} FROM {parquet(dataset, table)} UNION ALL "
            f"SELECT {columns} FROM {parquet(dataset, HISTORY[table])})")  # fmt: skip


def _items_at_event(dataset: Path) -> str:
    """The join of each event to its item's attributes: the version in force at the event
    (the first version for an event before it), so a later change never reaches back."""
    versions = _versions(dataset, "items")
    if versions is None:
        return f"LEFT JOIN {parquet(dataset, 'items')} i USING (item_id)"
    return f"""LEFT JOIN (
                SELECT *, lag(valid_from) OVER v IS NULL AS first_version,
                       lead(valid_from) OVER v AS valid_to
                FROM {versions} WINDOW v AS (PARTITION BY item_id ORDER BY valid_from)
            ) i ON i.item_id = e.item_id
                 AND (i.first_version OR i.valid_from <= e.event_timestamp)
                 AND (i.valid_to IS NULL OR e.event_timestamp < i.valid_to)"""


def static_sql(view: View, dataset: Path, built_at: datetime) -> str:
    import pyarrow.parquet as pq

    from recsys.schema import VALID_FROM

    table = ENTITY_TABLES[view.entity]
    select = ", ".join(f"{f.op.sql()} AS {f.name}" for f in view.features)
    versions, stamp = parquet(dataset, table), timestamp(EPOCH)
    path = Path(dataset) / f"{table}.parquet"
    # Not written yet (a query rendered ahead): the canonical columns, valid_from among them.
    if not path.exists() or VALID_FROM in pq.read_schema(path).names:
        stamp = f"COALESCE({VALID_FROM}, {stamp})"
        versions = _versions(dataset, table) or versions
    return f"""
        SELECT {view.key}, {select},
               {stamp} AS event_timestamp, {timestamp(built_at)} AS created_timestamp
        FROM {versions}
    """


def user_events_sql(
    view: View,
    dataset: Path,
    as_of: datetime,
    built_at: datetime,
    params: Params,
    part: tuple[int, int] = (0, 1),
) -> str:
    partials: dict[str, str] = {}
    for f in view.features:
        for name, sql in f.op.partials(params).items():
            if partials.setdefault(name, sql) != sql:
                raise ValueError(f"view {view.name}: two ops define the partial {name!r}")
    grouped = ", ".join(f"{sql} AS {name}" for name, sql in partials.items())
    select = ", ".join(f"{f.op.user_sql(params)} AS {f.name}" for f in view.features)
    key = view.key
    return f"""
        WITH grp AS (
            SELECT e.{key}, e.event_timestamp AS ts, {grouped}
            FROM {parquet(dataset, "interactions")} e
            {_items_at_event(dataset)}
            WHERE e.event_timestamp < {timestamp(as_of)} {_part(f"e.{key}", part)}
            GROUP BY e.{key}, e.event_timestamp
        )
        SELECT {key}, ts + INTERVAL 1 MICROSECOND AS event_timestamp, {select},
               {timestamp(built_at)} AS created_timestamp
        FROM grp
        WINDOW w AS (PARTITION BY {key} ORDER BY ts ROWS UNBOUNDED PRECEDING),
               recent AS (PARTITION BY {key} ORDER BY ts
                          ROWS BETWEEN {params.recent_items - 1} PRECEDING AND CURRENT ROW)
    """


def item_events_sql(
    view: View, dataset: Path, as_of: datetime, built_at: datetime, part: tuple[int, int] = (0, 1)
) -> str:
    deltas: dict[str, Delta] = {}
    for f in view.features:
        for name, delta in f.op.deltas().items():
            if deltas.setdefault(name, delta) != delta:
                raise ValueError(f"view {view.name}: two ops define the delta {name!r}")
    key = view.key
    enter = ", ".join(f"{d.enter} AS {name}" for name, d in deltas.items())
    # One set of rows per trailing window: each event taken back from that window's sums.
    windows = dict.fromkeys(d.days for d in deltas.values() if d.days is not None)
    exits = "".join(
        f" UNION ALL SELECT {key}, event_timestamp + INTERVAL {days} DAY + INTERVAL 1 MICROSECOND, "
        + ", ".join(f"-({d.enter})" if d.days == days else "0" for d in deltas.values())
        + " FROM ev"
        for days in windows
    )
    sums = ", ".join(f"sum({name}) AS {name}" for name in deltas)
    select = ", ".join(f"{f.op.item_sql()} AS {f.name}" for f in view.features)
    return f"""
        WITH ev AS (
            SELECT {key}, event_timestamp, rating FROM {parquet(dataset, "interactions")}
            WHERE event_timestamp < {timestamp(as_of)} {_part(key, part)}
        ), deltas AS (
            SELECT {key}, event_timestamp + INTERVAL 1 MICROSECOND AS t, {enter}
            FROM ev{exits}
        ), grp AS (
            SELECT {key}, t, {sums}
            FROM deltas WHERE t <= {timestamp(as_of)} GROUP BY {key}, t
        )
        SELECT {key}, t AS event_timestamp, {select},
               {timestamp(built_at)} AS created_timestamp
        FROM grp
        WINDOW w AS (PARTITION BY {key} ORDER BY t ROWS UNBOUNDED PRECEDING)
    """


def view_sqls(
    view: View, dataset: Path, as_of: datetime, built_at: datetime, params: Params, parts: int
) -> list[str]:
    """The queries whose rows, together, are ``view``'s table: one for a static view, one per
    hash partition of the key for an event view. DuckDB SQL; `recsys.features.dialect`
    translates it for Spark."""
    if view.kind == ViewKind.STATIC:
        return [static_sql(view, dataset, built_at)]
    if view.kind == ViewKind.USER_EVENTS:
        return [
            user_events_sql(view, dataset, as_of, built_at, params, (k, parts))
            for k in range(parts)
        ]
    return [item_events_sql(view, dataset, as_of, built_at, (k, parts)) for k in range(parts)]
