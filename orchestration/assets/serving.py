"""Serving assets: the online store's features and the promotion of a version."""

import time
from typing import Any

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.assets.common import builder_run, recall_metadata
from orchestration.resources import (
    FeastResource,
    LanceDBResource,
    ModelRegistryResource,
    PipelineSettings,
)


@asset(group_name="serving", deps=["feast_registry"], description="Each user's and item's "
       "latest feature values as of as_of into the online store: every entity whose latest "
       "row changed since the last run (late events included), and only those.")  # fmt: skip
def online_features(pipeline: PipelineSettings, feast: FeastResource) -> MaterializeResult:
    from recsys import store as feast_store
    from recsys.settings import run_as_of

    settings = pipeline.settings()
    as_of = run_as_of(settings)
    start = time.perf_counter()
    store = feast.store()
    report = feast_store.materialize(settings.paths, end=as_of, store=store)
    counts: dict[str, Any] = {}
    for view in report.views:
        counts[f"{view.view}_written"] = view.written
        counts[f"{view.view}_unchanged"] = view.unchanged
    return MaterializeResult(
        metadata={
            "materialized_until": str(as_of),
            "entities_written": report.written,
            "entities_unchanged": report.unchanged,
            **counts,
            "full_writes": MetadataValue.json([v.view for v in report.views if v.full]),
            "seconds": round(time.perf_counter() - start, 2),
            "online_store": feast_store.online_store_description(store.config),
        }  # fmt: skip
    )


@asset(
    group_name="serving",
    deps=["two_tower_model", "item_embeddings", "user_candidates", "online_features"],
    description="Promotion: the version this run built (gate passed, or the fallback "
    "baseline when no two-tower did; vectors and candidates complete) becomes current in "
    "one atomic switch (published whole to the artifact store first, when one is set), "
    "its candidates go online; then "
    "retention deletes the versions beyond current, previous and the last keep_versions.",
)
def promoted_model(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pyarrow.parquet as pq

    from evaluation.version_outputs import promotion_reason
    from recsys.audit import AuditFailed, audit_candidates
    from recsys.index.search import ItemIndex
    from recsys.registry import EMBEDDED
    from recsys.retention import apply_retention
    from recsys.settings import run_as_of
    from towers import candidates

    settings = pipeline.settings()
    reg = registry.registry()
    run_id = builder_run(context)
    version = reg.built_by(run_id, EMBEDDED)
    current = reg.current()
    if version is None:
        synced = reg.store is not None and reg.store.publish_current(
            reg, lancedb.db_dir(), settings.paths
        )  # the store lagging behind: newly set, or a run killed between the two switches
        return MaterializeResult(metadata={"current": current or "none",
                                           "status": "no new version in this run",
                                           "published_to_store": synced})  # fmt: skip
    # Consistency before the switch: the version's vectors and candidates are complete.
    index = ItemIndex.open(lancedb.db_dir(), version, mode="matrix")
    table = pq.read_table(reg.path(version) / "candidates.parquet")
    as_of = run_as_of(settings)
    audit = audit_candidates(table, version, settings.paths.dataset, as_of)
    if not audit.passed:  # nothing goes online, nothing is switched
        raise AuditFailed(audit)
    candidates.write_table(table, settings.paths.candidates / "user_candidates.parquet")
    pushed = candidates.push_online(feast.store(), table)
    kind, reason = promotion_reason(reg.info(version))
    if reg.store is not None:  # whole on the store before the pointer can name it
        reg.store.publish_served_folders(settings.paths)
        reg.store.publish(reg.path(version), lancedb.db_dir(), version)
    previous = reg.promote(version, run_id, reason=reason)
    kept = apply_retention(reg, lancedb.db_dir(), pipeline.keep_versions)
    if kept.deleted or kept.orphan_tables:
        context.log.info(f"retention deleted versions {kept.deleted}, "
                         f"tables of unknown versions {kept.orphan_tables}")  # fmt: skip
    metrics = reg.metrics(version)["models"]
    return MaterializeResult(
        metadata={
            "current": version,
            "kind": kind,
            "previous": previous or "none",
            "item_vectors": index.rows,
            "candidates_pushed_online": pushed,
            "test_recall@20": MetadataValue.json(
                {m: r["all"]["recall@20"] for m, r in metrics.items()}
            ),
            **recall_metadata(reg.metrics(version)),
            **{
                k: v
                for name, d in audit.details.items()
                for k, v in d.items()
                if k in ("seen_items", "users")
            },  # fmt: skip
            "versions_kept": MetadataValue.json(kept.kept),
            "versions_deleted": MetadataValue.json(kept.deleted),
            "orphan_tables_deleted": MetadataValue.json(kept.orphan_tables),
            "artifact_store": str(reg.store.url) if reg.store is not None else "none",
        }
    )
