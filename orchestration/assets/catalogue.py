"""The catalogue refresh: a version derived from the current one for a newer catalogue
(``evaluation.catalogue``), then embedded, given candidates and promoted by the same
assets as a trained version. It runs in ``catalogue_refresh`` (no training) and in
``full_pipeline``, where it does nothing when the run built a version itself."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from orchestration.assets.common import builder_run
from orchestration.resources import LanceDBResource, ModelRegistryResource, PipelineSettings


@asset(group_name="embeddings", deps=["feast_registry", "two_tower_model"],
       description="When the published items differ from the current two-tower version's "
       "item table (new ids, changed title, genres or release year), a new version derived "
       "from it: same weights (files copied), its gate inherited, the catalogue recorded; "
       "item_embeddings then embeds only the new and changed items.")  # fmt: skip
def catalogue_version(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    from evaluation.catalogue import catalogue_record, derive_version, plan_refresh, read_items

    start = time.perf_counter()
    settings = pipeline.settings()
    reg = registry.registry()
    run_id = builder_run(context)
    items = read_items(settings.paths.dataset)
    plan = plan_refresh(reg, run_id, lancedb.db_dir(), items)
    counts = {
        "new_items": int(plan.diff.new.size) if plan.diff else 0,
        "changed_items": int(plan.diff.changed.size) if plan.diff else 0,
        "items": items.num_rows,
        "parent": plan.parent or "none",
    }
    if not plan.derive:
        context.log.info(f"no catalogue version: {plan.reason}")
        return MaterializeResult(metadata={"status": f"no version: {plan.reason}", **counts,
                                           "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip
    assert plan.parent is not None and plan.diff is not None  # plan.derive says so
    if abandoned := reg.abandon_unfinished(run_id):  # one writing run at a time
        context.log.warning(f"rejected versions abandoned by ended runs: {abandoned}")
    reg.clean_staging(run_id)
    record = catalogue_record(settings.paths.dataset, items.num_rows, plan.diff)
    version = derive_version(reg, plan.parent, run_id, record)
    context.log.info(f"version {version} derived from {plan.parent}: {plan.reason}")
    return MaterializeResult(
        metadata={
            "status": f"derived: {plan.reason}",
            "version": version,
            **counts,
            "new_item_ids": MetadataValue.json(record["new_item_ids"][:100]),
            "changed_item_ids": MetadataValue.json(record["changed_item_ids"][:100]),
            "dataset_version": record["dataset_version"],
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
