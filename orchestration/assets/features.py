"""Feature assets: the DuckDB feature tables and `feast apply`."""

import time

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.assets.common import VIEWS, audit_checks, blocking_specs
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
    from recsys.audit import AuditFailed, read_audit
    from recsys.features.build import build_features
    from recsys.sql import connect, one, parquet

    settings = pipeline.settings()
    paths = settings.paths
    start = time.perf_counter()
    try:
        manifest = build_features(
            paths.dataset, paths.features, paths.data_dir, as_of=settings.as_of,
            recent_items=settings.recent_items, memory_limit=settings.duckdb_memory_limit,
            settings=settings,
        )  # fmt: skip
    except AuditFailed as failed:  # nothing published: the blocking checks say why
        context.log.error(str(failed))
        return MaterializeResult(
            metadata={"published": False, "rejected_kept_at": str(failed.audit.kept_at)},
            check_results=audit_checks(failed.audit),
        )
    seconds = time.perf_counter() - start
    audit = read_audit(paths.features)
    assert audit is not None  # written by publish_audited beside the published tables
    con = connect()
    freshness = {
        view: str(one(con, f"SELECT max(event_timestamp) FROM {parquet(paths.features, view)}")[0])
        for view in VIEWS
    }
    return MaterializeResult(
        metadata={
            "as_of": str(manifest.as_of),
            "rows": MetadataValue.json(manifest.rows),
            **{f"rows/{view}": int(n) for view, n in manifest.rows.items()},
            "latest_feature_timestamp": MetadataValue.json(freshness),
            "dataset_version": manifest.dataset_version,
            "engine": settings.engine,
            "published": True,
            "seconds": round(seconds, 2),
        },
        check_results=audit_checks(audit),
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
