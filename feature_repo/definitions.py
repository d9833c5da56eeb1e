"""Feast definitions: entities, feature views over the DuckDB-built parquet tables, services,
rendered from the feature catalogue (`recsys.features.catalog`), plus the candidates view.

The tables are written by ``recsys.features.build`` into ``<data folder>/features``; the data
folder is ``$RECSYS_DATA_DIR`` when set, else ``data/`` at the project root. Every table is
a time series stamped with the time its value became known (strictly after the events it
summarises), so Feast's point-in-time join gives leak-free training rows.

Feast (``feast apply``, and ``recsys.store.feast_objects``) finds the objects among this
module's globals, so each is bound to its name.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Float64, Int64, String

from recsys.features import catalog
from recsys.features.spec import View

DATA_DIR = Path(
    os.environ.get("RECSYS_DATA_DIR") or Path(__file__).resolve().parent.parent / "data"
)
FEATURES = DATA_DIR.resolve() / "features"
# The catalogue's dtypes (recsys.features.spec.DTYPES) as Feast types.
FEAST_TYPES = {
    "string": String,
    "int64": Int64,
    "float64": Float64,
    "string[]": Array(String),
    "int64[]": Array(Int64),
    "float32[]": Array(Float32),
    "float64[]": Array(Float64),
}


def _source(view: str) -> FileSource:
    return FileSource(
        name=f"{view}_source",
        path=str(FEATURES / f"{view}.parquet"),
        timestamp_field="event_timestamp",
        # Breaks ties between rows of one entity with the same event timestamp: the row
        # written last wins.
        created_timestamp_column="created_timestamp",
    )


def _feature_view(view: View) -> FeatureView:
    """The view's table as Feast reads it; each field tagged with how the towers encode it."""
    return FeatureView(
        name=view.name,
        entities=[ENTITIES[view.entity]],
        ttl=view.ttl,
        schema=[
            Field(
                name=f.name,
                dtype=FEAST_TYPES[f.dtype],
                description=f.description,
                tags={"encoding": f.encoding.value},
            )
            for f in view.features
        ],
        source=_source(view.name),
        description=view.description,
    )


ENTITIES = {
    entity: Entity(name=entity, join_keys=[f"{entity}_id"], value_type=ValueType.INT64)
    for entity in dict.fromkeys(v.entity for v in catalog.CATALOG.views)
}
FEATURE_VIEWS = {view.name: _feature_view(view) for view in catalog.CATALOG.views}
SERVICES = {
    s.name: FeatureService(
        name=s.name, features=[FEATURE_VIEWS[v] for v in s.views], description=s.description
    )
    for s in catalog.CATALOG.services
}
globals().update({**ENTITIES, **FEATURE_VIEWS, **SERVICES})

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
# refuse candidates of a version it has not loaded. Not in the catalogue: its rows are a
# model's scores, written by the pipeline, not computed from the dataset by
# recsys.features.build (which builds every catalogue view).
user_candidates = FeatureView(
    name="user_candidates",
    entities=[ENTITIES["user"]],
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

user_candidates_v1 = FeatureService(
    name="user_candidates_v1",
    features=[user_candidates],
    description="Precomputed candidates of the current model version (serving's fast path).",
)
