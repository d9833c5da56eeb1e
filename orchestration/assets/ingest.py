"""Ingest assets: new interaction batches in, the canonical dataset out.

``incoming_batch`` recognises, validates and stages the files in ``<data>/incoming``
(`recsys.incoming`: files known by content, events by key, re-sent ones never appended
twice); ``dataset`` appends the staged batches in a new dataset version that is audited
before it is published (`recsys.dataset`), so a failing check leaves the published dataset
as it was and the next run unblocked.
"""

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.assets.common import (
    BATCH_CHECKS,
    DATASET_TABLES,
    audit_checks,
    blocking_specs,
    report_checks,
)
from orchestration.resources import PipelineSettings


@asset(
    group_name="ingest",
    check_specs=blocking_specs("incoming_batch", BATCH_CHECKS, "incoming batch"),
    description="New files from <data>/incoming (interactions; user and item versions in "
    "incoming/users and incoming/items): files already taken (by content), events and "
    "versions already in the dataset are set aside and counted; the rest are validated "
    "together with Great Expectations; a failing batch is moved whole to incoming/rejected "
    "with its report.",
)
def incoming_batch(context: AssetExecutionContext, pipeline: PipelineSettings) -> MaterializeResult:
    from recsys import incoming
    from recsys.dataset import ensure_dataset

    settings = pipeline.settings()
    ensure_dataset(settings)  # batches are checked against the dataset's users and items
    staged = incoming.stage(settings)
    if staged is None:
        return MaterializeResult(
            metadata={"files": 0, "rows": 0, "new_events": 0, "status": "no new batch"},
            check_results=report_checks(None, BATCH_CHECKS),
        )
    report = staged.report
    failed = [o for o in report.outcomes if not o.success]
    return MaterializeResult(
        metadata={
            "batch": staged.batch_id,
            "files": MetadataValue.json([incoming.display_name(p) for p in staged.files]),
            "rows": staged.rows,
            "new_events": staged.new_events,
            "duplicate_events": staged.duplicate_events,
            # {"users"|"items": {"new", "changed", "unchanged"}}: versions of this batch
            "catalogue": MetadataValue.json(staged.catalogue),
            "duplicate_files": MetadataValue.json(staged.duplicate_files),
            "status": staged.status,
            "rejected_rows": staged.rows if failed else 0,
            "failed_checks": MetadataValue.json([o.name for o in failed]),
            "casts": MetadataValue.json(staged.casts),
            "report": MetadataValue.md(report.markdown()),
        },
        check_results=report_checks(report, BATCH_CHECKS),
    )


@asset(
    group_name="ingest",
    deps=["incoming_batch"],
    check_specs=blocking_specs(
        "dataset", [f"{t} valid" for t in DATASET_TABLES], "dataset table"
    ),  # fmt: skip
    description="The canonical dataset (users, items, interactions): the configured source "
    "plus every accepted batch; each new version is audited (GX) in staging and published "
    "atomically only if every check passes.",
)
def dataset(context: AssetExecutionContext, pipeline: PipelineSettings) -> MaterializeResult:
    from recsys.dataset import append_accepted, ensure_dataset, published_audit
    from recsys.io import read_json

    settings = pipeline.settings()
    paths = settings.paths
    ensure_dataset(settings)
    result = append_accepted(settings)
    # The checks of the version written now, else those the published version passed.
    audit = result.audit or published_audit(paths)
    if result.rejected:
        context.log.error(f"dataset not published: {audit.failed} failed; batches "
                          f"{result.rejected} moved to incoming/rejected, the rejected dataset "
                          f"kept in {audit.kept_at}")  # fmt: skip
    info = read_json(paths.dataset / "manifest.json")
    return MaterializeResult(
        metadata={
            "users": int(info["users"]),
            "items": int(info["items"]),
            "interactions": int(info["interactions"]),
            "new_events": result.new_events,
            "first_event": str(info.get("first_event")),
            "last_event": str(info.get("last_event")),
            "source": str(info.get("source")),
            "casts_on_load": MetadataValue.json(info.get("casts", [])),
            "batches_appended": MetadataValue.json(result.appended),
            "batches_rejected": MetadataValue.json(result.rejected),
            "published": not result.rejected,
            "dataset_version": paths.dataset.resolve().name,
        },
        check_results=audit_checks(audit),
    )
