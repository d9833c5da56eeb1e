"""Ingest assets: new interaction batches in, the canonical dataset out."""


from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.assets.common import (
    BATCH_CHECKS,
    DATASET_TABLES,
    blocking_specs,
    report_checks,
    table_check,
)
from orchestration.resources import (
    PipelineSettings,
)


@asset(
    group_name="ingest",
    check_specs=blocking_specs("incoming_batch", BATCH_CHECKS, "incoming batch"),
    description="New interaction files from <data>/incoming, validated with Great "
    "Expectations; a failing batch is moved whole to incoming/rejected with its report.",
)
def incoming_batch(context: AssetExecutionContext, pipeline: PipelineSettings) -> MaterializeResult:
    from recsys import incoming

    settings = pipeline.settings()
    if not (settings.paths.dataset / "manifest.json").exists():
        from recsys.ingest import ingest

        ingest(settings)  # batches are checked against the dataset's users and items
    staged = incoming.stage(settings)
    if staged is None:
        return MaterializeResult(
            metadata={"files": 0, "rows": 0, "status": "no new batch"},
            check_results=report_checks(None, BATCH_CHECKS),
        )
    report = staged.report
    failed = [o for o in report.outcomes if not o.success]
    return MaterializeResult(
        metadata={
            "batch": staged.batch_id,
            "files": MetadataValue.json([p.name for p in staged.files]),
            "rows": staged.rows,
            "status": "accepted" if staged.accepted else "rejected",
            "rejected_rows": staged.rows if failed else 0,
            "failed_checks": MetadataValue.json([o.name for o in failed]),
            "report": MetadataValue.md(report.markdown()),
        },
        check_results=report_checks(report, BATCH_CHECKS),
    )


@asset(
    group_name="ingest",
    deps=["incoming_batch"],
    check_specs=blocking_specs("dataset", [f"{t} valid" for t in DATASET_TABLES], "dataset table"),
    description="The canonical dataset (users, items, interactions): the configured source, "
    "plus every accepted batch, published atomically.",
)
def dataset(context: AssetExecutionContext, pipeline: PipelineSettings) -> MaterializeResult:
    import pandas as pd

    from recsys import incoming
    from recsys.ingest import describe_source, ingest
    from recsys.io import read_json
    from recsys.validation import validate_interactions, validate_items, validate_users

    settings = pipeline.settings()
    paths = settings.paths
    manifest = paths.dataset / "manifest.json"
    if not manifest.exists() or read_json(manifest).get("source") != describe_source(settings):
        ingest(settings)
    appended = incoming.append_accepted(settings)
    users = pd.read_parquet(paths.dataset / "users.parquet")
    items = pd.read_parquet(paths.dataset / "items.parquet")
    events = pd.read_parquet(paths.dataset / "interactions.parquet")
    reports = {
        "interactions": validate_interactions(
            events,
            as_of=pd.Timestamp.now(tz="UTC"),  # nothing from the future (as_of may hide some)
            known_users=users.user_id.to_numpy(),
            known_items=items.item_id.to_numpy(),
        ),
        "users": validate_users(users),
        "items": validate_items(items),
    }
    checks = [table_check(table, report) for table, report in reports.items()]
    info = read_json(manifest)
    return MaterializeResult(
        metadata={
            "users": len(users),
            "items": len(items),
            "interactions": len(events),
            "first_event": str(info.get("first_event")),
            "last_event": str(info.get("last_event")),
            "source": str(info.get("source")),
            "batches_appended": MetadataValue.json(appended),
        },  # fmt: skip
        check_results=checks,
    )
