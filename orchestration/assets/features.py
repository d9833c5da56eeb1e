"""Feature assets: the DuckDB feature tables and `feast apply`."""

import time

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.assets.common import VIEW_KEYS, VIEWS, blocking_specs, check_name
from orchestration.resources import (
    FeastResource,
    PipelineSettings,
)


@asset(
    group_name="features",
    deps=["dataset"],
    check_specs=blocking_specs("features", [f"{v} valid" for v in VIEWS], "feature table"),
    description="DuckDB SQL → one parquet time series per feature view (values only from "
    "events strictly before each row's timestamp).",
)
def features(context: AssetExecutionContext, pipeline: PipelineSettings) -> MaterializeResult:
    import pandas as pd

    from recsys.features import build_features
    from recsys.validation import validate_feature_table

    settings = pipeline.settings()
    paths = settings.paths
    start = time.perf_counter()
    manifest = build_features(
        paths.dataset, paths.features, paths.data_dir, as_of=settings.as_of,
        recent_items=settings.recent_items, memory_limit=settings.duckdb_memory_limit,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    checks, freshness = [], {}
    for view in VIEWS:
        frame = pd.read_parquet(paths.feature_file(view))
        report = validate_feature_table(frame, key=VIEW_KEYS[view], table=view)
        if len(frame):
            freshness[view] = str(frame["event_timestamp"].max())
        checks.append(
            AssetCheckResult(
                check_name=check_name(f"{view} valid"),
                passed=report.success,
                metadata={
                    "rows": len(frame),
                    "failed": MetadataValue.json([o.name for o in report.failed]),
                },
            )  # fmt: skip
        )
    return MaterializeResult(
        metadata={
            "as_of": str(manifest.as_of),
            "rows": MetadataValue.json(manifest.rows),
            "latest_feature_timestamp": MetadataValue.json(freshness),
            "seconds": round(seconds, 2),
        },
        check_results=checks,
    )


@asset(group_name="features", deps=["features"], description="feast apply: entities, views, "
       "services of feature_repo/ registered for this data folder.")  # fmt: skip
def feast_registry(feast: FeastResource, pipeline: PipelineSettings) -> MaterializeResult:
    from recsys import store as feast_store

    store = feast_store.apply(pipeline.settings().paths, feast.store())
    return MaterializeResult(
        metadata={
            "feature_views": MetadataValue.json(sorted(v.name for v in store.list_feature_views())),
            "feature_services": MetadataValue.json(
                sorted(s.name for s in store.list_feature_services())
            ),
        }
    )
