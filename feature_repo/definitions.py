"""Feast definitions: entities, feature views over the DuckDB-built parquet tables, services.

The tables are written by ``recsys.features`` into ``<data folder>/features``; the data
folder is ``$RECSYS_DATA_DIR`` when set, else ``data/`` at the project root. Every table is
a time series stamped with the time its value became known (strictly after the events it
summarises), so Feast's point-in-time join gives leak-free training rows.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Float64, Int64, String

DATA_DIR = Path(
    os.environ.get("RECSYS_DATA_DIR") or Path(__file__).resolve().parent.parent / "data"
)
FEATURES = DATA_DIR.resolve() / "features"


def _source(view: str) -> FileSource:
    return FileSource(
        name=f"{view}_source",
        path=str(FEATURES / f"{view}.parquet"),
        timestamp_field="event_timestamp",
        # Breaks ties between rows of one entity with the same event timestamp: the row
        # written last wins.
        created_timestamp_column="created_timestamp",
    )


user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)

user_profile_source = _source("user_profile")
user_activity_source = _source("user_activity")
item_content_source = _source("item_content")
item_popularity_source = _source("item_popularity")

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    # Static attributes stamped at the epoch: they never expire.
    ttl=timedelta(0),
    schema=[
        Field(name="age_bucket", dtype=String),
        Field(name="gender", dtype=String),
        Field(name="occupation", dtype=String),
        Field(name="zip_prefix", dtype=String),
    ],
    source=user_profile_source,
)

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    # A user silent for a year is treated as unknown: their history no longer describes them.
    ttl=timedelta(days=365),
    schema=[
        Field(name="user_interaction_count", dtype=Int64),
        Field(name="user_mean_rating", dtype=Float64),
        # Share of the user's interactions per genre, in the manifest's genre order.
        Field(name="user_genre_affinity", dtype=Array(Float32)),
        # Most recent first; for history pooling and for removing already-seen items.
        Field(name="recent_item_ids", dtype=Array(Int64)),
        # Aligned with recent_item_ids: the rating given (NaN when unrated: the online store
        # would turn a null element into 0.0) and the event time in whole epoch seconds.
        Field(name="recent_item_ratings", dtype=Array(Float64)),
        Field(name="recent_item_timestamps", dtype=Array(Int64)),
    ],
    source=user_activity_source,
)

item_content = FeatureView(
    name="item_content",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_genres", dtype=Array(String)),
        Field(name="item_release_year", dtype=Int64),
    ],
    source=item_content_source,
)

item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    # Windowed counts are exact at every change point; after a year of silence the item is
    # treated as unknown rather than as having its last, stale totals.
    ttl=timedelta(days=365),
    schema=[
        Field(name="item_interaction_count", dtype=Int64),
        Field(name="item_mean_rating", dtype=Float64),
        Field(name="item_count_7d", dtype=Int64),
        Field(name="item_count_30d", dtype=Int64),
    ],
    source=item_popularity_source,
)

CANDIDATES = DATA_DIR.resolve() / "candidates" / "user_candidates.parquet"


def _empty_candidates() -> None:
    """Until a model version is promoted the candidates table is empty, but it exists, so
    that `feast materialize` over every view works in a fresh checkout."""
    if CANDIDATES.exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("candidate_item_ids", pa.list_(pa.int64())),
        ("candidate_scores", pa.list_(pa.float32())), ("model_version", pa.string()),
    ])  # fmt: skip
    CANDIDATES.parent.mkdir(parents=True, exist_ok=True)
    tmp = CANDIDATES.with_name(f".{CANDIDATES.name}.{os.getpid()}.tmp")
    pq.write_table(schema.empty_table(), tmp)
    os.replace(tmp, CANDIDATES)


_empty_candidates()

# Top-K candidates per user, precomputed by the promoted model version (the serving fast
# path). Written by the pipeline's candidate step (towers.candidates), which also pushes them
# into the online store; each row names the model version it came from, so serving can
# refuse candidates of a version it has not loaded.
user_candidates = FeatureView(
    name="user_candidates",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="candidate_item_ids", dtype=Array(Int64)),
        Field(name="candidate_scores", dtype=Array(Float32)),
        Field(name="model_version", dtype=String),
    ],
    source=FileSource(
        name="user_candidates_source",
        path=str(CANDIDATES),
        timestamp_field="event_timestamp",
    ),
    online=True,
    description="Top-K items per user from the current model version, for serving.",
)

two_tower_training_v1 = FeatureService(
    name="two_tower_training_v1",
    features=[user_profile, user_activity, item_content, item_popularity],
    description="Point-in-time features of both towers for training rows (user, item, time).",
)

user_tower_serving_v1 = FeatureService(
    name="user_tower_serving_v1",
    features=[user_profile, user_activity],
    description="Online features the user tower needs at request time.",
)

item_tower_v1 = FeatureService(
    name="item_tower_v1",
    features=[item_content, item_popularity],
    description="Item features the item tower needs to embed the catalogue as of a time.",
)

user_candidates_v1 = FeatureService(
    name="user_candidates_v1",
    features=[user_candidates],
    description="Precomputed candidates of the current model version (serving's fast path).",
)
