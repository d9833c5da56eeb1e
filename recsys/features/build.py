"""Feature tables: DuckDB SQL from the canonical dataset to one parquet time series per view.

The invariant every table keeps: **a value visible at time t is computed only from events
with timestamp strictly before t.** Feast's point-in-time join picks, for an entity row at
t, the latest feature row stamped ``<= t``. So a value that includes the events of second
``ts`` is stamped ``ts + 1 µs`` (timestamps are microseconds, the finest unit stored): an
entity row at ``ts`` itself sees only the value before, never the events it shares a
timestamp with (on MovieLens-100K 75% of ratings share their (user, second) with another).

Views (names match ``feature_repo/definitions.py``):

- ``user_profile``: age bucket, gender, occupation, zip prefix. Static attributes, stamped
  at the Unix epoch: known from the start, never derived from events.
- ``user_activity``: one row per (user, distinct event time): interaction count, mean
  rating, genre affinity (share of the user's interactions per genre, in the vocabulary
  order of the manifest), the most recent item ids (most recent first), and aligned with
  them the ratings given (NaN when unrated: Feast's online store turns a null inside a list
  into 0.0, NaN survives) and the event times (whole epoch seconds).
- ``item_content``: genres, release year. Static, stamped at the epoch.
- ``item_popularity``: total count, mean rating, and counts over trailing windows. A
  trailing count changes when an event enters the window and again when it leaves, so each
  event adds a +1 row at ``ts + 1 µs`` and a -1 row at ``ts + window + 1 µs``; running sums
  give exact values at every change point (window = events in ``[t - window, t)``).

Every table also carries ``created_timestamp`` (the build time), which Feast uses to break
ties between rows with the same entity and event timestamp.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.io import atomic_write_json, staging_dir
from recsys.sql import connect, one, parquet, string, timestamp

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
# A timestamp as whole seconds since the epoch (floored): the type of recent_item_timestamps.
EPOCH_SECONDS = "CAST(floor(epoch_us({ts}) / 1000000.0) AS BIGINT)"
# Trailing windows of item popularity; the Feast view declares item_count_<d>d for each.
POPULARITY_WINDOWS_DAYS = (7, 30)
VIEWS = ("user_profile", "user_activity", "item_content", "item_popularity")
# Age buckets of MovieLens-1M: coarse enough to generalise, a common convention.
AGE_BUCKETS = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
)


@dataclass(frozen=True)
class FeatureManifest:
    """What a feature build used and produced; written beside the tables."""

    as_of: datetime
    built_at: datetime
    genres: list[str]
    recent_items: int
    popularity_windows_days: list[int] = field(
        default_factory=lambda: list(POPULARITY_WINDOWS_DAYS)
    )
    rows: dict[str, int] = field(default_factory=dict)
    # The published dataset version the tables were computed from (its folder's name behind
    # the ``dataset`` link): what the training set checks before it reads them.
    dataset_version: str = ""


def default_as_of(dataset_dir: Path) -> datetime:
    """Just after the last event, so that every event is visible."""
    con = connect()
    (last,) = one(con, f"SELECT max(event_timestamp) FROM {parquet(dataset_dir, 'interactions')}")
    if last is None:
        raise ValueError(f"{dataset_dir}/interactions.parquet has no events")
    return last + ONE_US


def user_profile_sql(dataset: Path, built_at: datetime) -> str:
    age = " ".join(f"WHEN age < {hi} THEN '{name}'" for hi, name in AGE_BUCKETS)
    return f"""
        SELECT user_id,
               CASE WHEN age IS NULL THEN NULL {age} ELSE '56+' END AS age_bucket,
               gender, occupation,
               substr(zip_code, 1, 3) AS zip_prefix,
               {timestamp(EPOCH)} AS event_timestamp, {timestamp(built_at)} AS created_timestamp
        FROM {parquet(dataset, "users")}
    """


def _part(key: str, part: tuple[int, int]) -> str:
    """The rows of one hash partition of the entity key: ``(k, of)`` is part k of `of`."""
    k, of = part
    return f"AND hash({key}) % {of} = {k}" if of > 1 else ""


def user_activity_sql(
    dataset: Path,
    as_of: datetime,
    built_at: datetime,
    genres: list[str],
    recent_items: int,
    part: tuple[int, int] = (0, 1),
) -> str:
    # Aggregate each (user, second) group first: one output row per group, so ties at the
    # same timestamp enter a value together and none of them is visible at that timestamp.
    genre_sums = ", ".join(
        f"sum(list_contains(i.genres, {string(g)})::INT) AS g{k}" for k, g in enumerate(genres)
    )
    affinity = ", ".join(f"sum(g{k}) OVER w / sum(n) OVER w" for k in range(len(genres)))
    return f"""
        WITH grp AS (
            SELECT e.user_id, e.event_timestamp AS ts, count(*) AS n,
                   sum(e.rating) AS rating_sum, count(e.rating) AS rating_n,
                   -- Aligned lists (one order): each item keeps its rating; every event
                   -- of the group has the group's time.
                   list(e.item_id ORDER BY e.item_id, e.rating) AS items,
                   list(coalesce(e.rating, 'NaN'::DOUBLE) ORDER BY e.item_id, e.rating)
                       AS ratings,
                   list({EPOCH_SECONDS.format(ts="e.event_timestamp")}) AS times
                   {", " + genre_sums if genres else ""}
            FROM {parquet(dataset, "interactions")} e
            LEFT JOIN {parquet(dataset, "items")} i USING (item_id)
            WHERE e.event_timestamp < {timestamp(as_of)} {_part("e.user_id", part)}
            GROUP BY e.user_id, e.event_timestamp
        )
        SELECT user_id,
               ts + INTERVAL 1 MICROSECOND AS event_timestamp,
               (sum(n) OVER w)::BIGINT AS user_interaction_count,
               sum(rating_sum) OVER w / nullif(sum(rating_n) OVER w, 0) AS user_mean_rating,
               [{affinity}]::FLOAT[] AS user_genre_affinity,
               -- The last `recent_items` groups hold at least that many items; newest first.
               list_reverse(flatten(list(items) OVER recent))[1:{recent_items}] AS recent_item_ids,
               list_reverse(flatten(list(ratings) OVER recent))[1:{recent_items}]
                   AS recent_item_ratings,
               list_reverse(flatten(list(times) OVER recent))[1:{recent_items}]
                   AS recent_item_timestamps,
               {timestamp(built_at)} AS created_timestamp
        FROM grp
        WINDOW w AS (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING),
               recent AS (PARTITION BY user_id ORDER BY ts
                          ROWS BETWEEN {recent_items - 1} PRECEDING AND CURRENT ROW)
    """


def item_content_sql(dataset: Path, built_at: datetime) -> str:
    return f"""
        SELECT item_id, genres AS item_genres, release_year AS item_release_year,
               {timestamp(EPOCH)} AS event_timestamp, {timestamp(built_at)} AS created_timestamp
        FROM {parquet(dataset, "items")}
    """


def item_popularity_sql(
    dataset: Path, as_of: datetime, built_at: datetime, part: tuple[int, int] = (0, 1)
) -> str:
    windows = POPULARITY_WINDOWS_DAYS
    enter = ", ".join(f"1 AS d{d}" for d in windows)
    exits = [
        f"SELECT item_id, event_timestamp + INTERVAL {d} DAY + INTERVAL 1 MICROSECOND, 0, 0, 0, "
        + ", ".join("-1" if w == d else "0" for w in windows)
        + " FROM ev"
        for d in windows
    ]
    counts = ", ".join(f"(sum(d{d}) OVER w)::BIGINT AS item_count_{d}d" for d in windows)
    return f"""
        WITH ev AS (
            SELECT item_id, event_timestamp, rating FROM {parquet(dataset, "interactions")}
            WHERE event_timestamp < {timestamp(as_of)} {_part("item_id", part)}
        ), deltas AS (
            SELECT item_id, event_timestamp + INTERVAL 1 MICROSECOND AS t, 1 AS d_total,
                   coalesce(rating, 0) AS d_rating_sum, (rating IS NOT NULL)::INT AS d_rating_n,
                   {enter}
            FROM ev
            UNION ALL {" UNION ALL ".join(exits)}
        ), grp AS (
            SELECT item_id, t, sum(d_total) AS d_total, sum(d_rating_sum) AS d_rating_sum,
                   sum(d_rating_n) AS d_rating_n, {", ".join(f"sum(d{d}) AS d{d}" for d in windows)}
            FROM deltas WHERE t <= {timestamp(as_of)} GROUP BY item_id, t
        )
        SELECT item_id, t AS event_timestamp,
               (sum(d_total) OVER w)::BIGINT AS item_interaction_count,
               sum(d_rating_sum) OVER w / nullif(sum(d_rating_n) OVER w, 0) AS item_mean_rating,
               {counts},
               {timestamp(built_at)} AS created_timestamp
        FROM grp
        WINDOW w AS (PARTITION BY item_id ORDER BY t ROWS UNBOUNDED PRECEDING)
    """


def genre_vocabulary(dataset: Path) -> list[str]:
    con = connect()
    rows = con.execute(
        f"SELECT DISTINCT unnest(genres) AS g FROM {parquet(dataset, 'items')} ORDER BY g"
    ).fetchall()
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
) -> FeatureManifest:
    """Write the four feature tables of ``dataset`` into ``out_dir`` (an existing folder).

    The event-derived views partition every window by user or by item, so they are computed
    in hash partitions of that key (one per ``EVENTS_PER_PART`` interactions), each written
    sorted by key and time and streamed into the view's single parquet file.
    """
    as_of = as_of or default_as_of(dataset)
    built_at = built_at or datetime.now(UTC)
    genres = genre_vocabulary(dataset)
    con = connect(memory_limit)
    con.execute("SET preserve_insertion_order = false")  # lets DuckDB stream and spill
    (events,) = one(con, f"SELECT count(*) FROM {parquet(dataset, 'interactions')}")
    parts = max(1, -(-events // EVENTS_PER_PART))
    queries: dict[str, list[str]] = {
        "user_profile": [user_profile_sql(dataset, built_at)],
        "user_activity": [
            user_activity_sql(dataset, as_of, built_at, genres, recent_items, (k, parts))
            for k in range(parts)
        ],
        "item_content": [item_content_sql(dataset, built_at)],
        "item_popularity": [
            item_popularity_sql(dataset, as_of, built_at, (k, parts)) for k in range(parts)
        ],
    }
    rows = {}
    for view, sqls in queries.items():
        key = "user_id" if view.startswith("user") else "item_id"
        files = []
        for k, sql in enumerate(tqdm(sqls, desc=view, disable=None, leave=False)):
            files.append(Path(out_dir) / f".{view}.part{k}.parquet")
            con.execute(
                f"COPY (SELECT * FROM ({sql}) ORDER BY {key}, event_timestamp) "
                f"TO {string(str(files[-1]))} (FORMAT parquet, COMPRESSION zstd)"
            )
        rows[view] = _concat(files, Path(out_dir) / f"{view}.parquet")
        log.info("feature view %s: %d rows", view, rows[view])
    manifest = FeatureManifest(as_of, built_at, genres, recent_items, rows=rows,
                               dataset_version=dataset_version(dataset))  # fmt: skip
    atomic_write_json(Path(out_dir) / "manifest.json", asdict(manifest))
    return manifest


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
