"""The pipeline's assets, in the order data flows (``../shared/DESIGN.md``):

ingest:     incoming_batch → dataset                      [GX checks, blocking]
features:   features [GX checks, blocking] → feast_registry
training:   training_set → two_tower_model                [quality gate, blocking]
embeddings: item_embeddings (LanceDB) → user_candidates
serving:    online_features (Feast materialize) → promoted_model (the "current" switch)

State lives in the data folder (dataset, features, Feast, registry, LanceDB), not in
Dagster's IO managers: every asset reads what its upstream published there and publishes
atomically, so a killed run leaves the last good state, and the next run picks up from it.
Blocking checks fail → nothing downstream runs in that run: no training on bad data, no
promotion of a worse model. Rejected rows are never dropped silently: a failing batch is
moved whole to ``incoming/rejected/`` with its report, and counts go in the metadata.
"""

import base64
import json
import re
import time
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.resources import (
    FeastResource,
    LanceDBResource,
    ModelRegistryResource,
    PipelineSettings,
)

VIEWS = ("user_profile", "user_activity", "item_content", "item_popularity")
VIEW_KEYS = {"user_profile": "user_id", "user_activity": "user_id",
             "item_content": "item_id", "item_popularity": "item_id"}  # fmt: skip
# One blocking check per Great Expectations outcome on an incoming batch
# (recsys.validation.validate_interactions), so a corruption fails the check that names it.
BATCH_CHECKS = (
    "interactions readable", "interactions not empty", "interactions columns",
    "interactions.user_id type", "interactions.item_id type", "interactions.rating type",
    "interactions.event_timestamp type", "interactions.user_id not null",
    "interactions.item_id not null", "interactions.event_timestamp not null",
    "interactions events unique", "interactions.rating in range",
    "interactions.event_timestamp not after as_of", "interactions.user_id known",
    "interactions.item_id known", "interactions.rating mean in range",
)  # fmt: skip
DATASET_TABLES = ("interactions", "users", "items")
QUALITY_GATE = "quality_gate"


def check_name(name: str) -> str:
    """A GX outcome name as a Dagster check name ([a-z0-9_])."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _blocking(asset_name: str, names: Any, what: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(check_name(n), asset=asset_name, blocking=True, description=f"{what}: {n}")
        for n in names
    ]


def _png(data: bytes, alt: str) -> MetadataValue:
    """A PNG shown inline in the Dagster UI (markdown with a data URI)."""
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})")


def _report_checks(report: Any, names: Any) -> list[AssetCheckResult]:
    """One result per expected check name; a check GX did not run passes as not applicable."""
    found = {o.name: o for o in report.outcomes} if report is not None else {}
    results = []
    for name in names:
        outcome = found.get(name)
        if outcome is None:
            results.append(AssetCheckResult(check_name=check_name(name), passed=True,
                                            metadata={"detail": "not applicable"}))  # fmt: skip
            continue
        results.append(
            AssetCheckResult(
                check_name=check_name(name),
                passed=bool(outcome.success),
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "detail": outcome.detail,
                    "unexpected_rows": int(outcome.unexpected_count),
                },
            )
        )
    return results


def _table_check(table: str, report: Any) -> AssetCheckResult:
    """The "<table> valid" check: passed when every GX outcome on the table passed."""
    return AssetCheckResult(
        check_name=check_name(f"{table} valid"),
        passed=report.success,
        metadata={
            "rows": report.rows,
            "failed": MetadataValue.json([o.name for o in report.failed]),
            "checks": MetadataValue.md(report.markdown()),
        },
    )


# --- ingest ------------------------------------------------------------------------------
@asset(
    group_name="ingest",
    check_specs=_blocking("incoming_batch", BATCH_CHECKS, "incoming batch"),
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
            check_results=_report_checks(None, BATCH_CHECKS),
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
        check_results=_report_checks(report, BATCH_CHECKS),
    )


@asset(
    group_name="ingest",
    deps=[incoming_batch],
    check_specs=_blocking("dataset", [f"{t} valid" for t in DATASET_TABLES], "dataset table"),
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
    checks = [_table_check(table, report) for table, report in reports.items()]
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


# --- features ------------------------------------------------------------------------------
@asset(
    group_name="features",
    deps=[dataset],
    check_specs=_blocking("features", [f"{v} valid" for v in VIEWS], "feature table"),
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


@asset(group_name="features", deps=[features], description="feast apply: entities, views, "
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


# --- training ------------------------------------------------------------------------------
@asset(group_name="training", deps=[feast_registry], description="Point-in-time training "
       "rows through Feast (get_historical_features) with the temporal train/val/test split.")  # fmt: skip
def training_set(feast: FeastResource, pipeline: PipelineSettings) -> MaterializeResult:
    from recsys.training_set import build_training_set

    start = time.perf_counter()
    summary = build_training_set(pipeline.settings(), feast.store())
    return MaterializeResult(
        metadata={
            "rows": MetadataValue.json(summary.rows),
            "users": MetadataValue.json(summary.users),
            "cold_test_users": summary.cold_test_users,
            "cuts": MetadataValue.json({k: str(v) for k, v in vars(summary.cuts).items()}),
            "feature_coverage": MetadataValue.json(summary.feature_coverage),
            "seconds": round(time.perf_counter() - start, 2),
        }
    )


def _fingerprint(settings: Any, config: dict[str, Any], temperatures: Any) -> str:
    from recsys.io import read_json
    from recsys.registry import fingerprint

    paths = settings.paths
    training = read_json(paths.training / "summary.json")
    training.pop("path", None)
    return fingerprint(
        read_json(paths.dataset / "manifest.json"),
        training,
        read_json(paths.features / "manifest.json").get("rows"),
        config,
        list(temperatures),
    )


def _gate(
    metrics: dict[str, Any], current: dict[str, Any] | None, tolerance: float
) -> tuple[bool, str]:
    """Better than popularity, and no worse than the current version beyond ``tolerance``
    (test recall@20 over all users)."""
    models = metrics["models"]
    ours = models["two-tower (softmax)"]["all"]["recall@20"]
    popularity = models["popularity"]["all"]["recall@20"]
    reasons = []
    if not ours > popularity:
        reasons.append(f"recall@20 {ours:.4f} is not above popularity's {popularity:.4f}")
    if current is not None:
        theirs = current["models"]["two-tower (softmax)"]["all"]["recall@20"]
        if ours < theirs - tolerance:
            reasons.append(f"recall@20 {ours:.4f} is below the current version's {theirs:.4f} "
                           f"by more than {tolerance}")  # fmt: skip
    ok = not reasons
    return ok, ("passed: " if ok else "failed: ") + (
        "; ".join(reasons) or f"recall@20 {ours:.4f} vs popularity {popularity:.4f}"
    )


@asset(
    group_name="training",
    deps=[training_set],
    check_specs=[
        AssetCheckSpec(
            QUALITY_GATE,
            asset="two_tower_model",
            blocking=True,
            description="Test recall@20 above popularity and no worse "
            "than the current version beyond the tolerance.",
        )
    ],  # fmt: skip
    description="A new model version: temperatures tried and epochs chosen on validation, "
    "refit on train + validation, scored on the test window against popularity and EASE.",
)
def two_tower_model(
    context: AssetExecutionContext, pipeline: PipelineSettings, registry: ModelRegistryResource
) -> MaterializeResult:
    from dataclasses import replace

    from towers.compare import compare
    from towers.config import TowerConfig
    from towers.export import export_version

    settings = pipeline.settings()
    reg = registry.registry()
    removed = reg.clean_staging()
    if removed:
        context.log.warning(f"removed unfinished versions of killed runs: {removed}")
    base = replace(TowerConfig(), epochs=pipeline.max_epochs)
    grid = pipeline.temperature_grid()
    print_ = _fingerprint(settings, base.to_dict(), grid)
    existing = None if pipeline.force_retrain else reg.find(print_)
    current = reg.current()
    current_metrics = reg.metrics(current) if current else None
    if existing is not None:
        # A version from before the user tower was exported for serving gets its graph.
        export_version(reg.path(existing), missing_only=True)
        metrics = reg.metrics(existing)
        ok, why = _gate(metrics, current_metrics if current != existing else None,
                        pipeline.gate_tolerance)  # fmt: skip
        context.log.info(f"data and config unchanged: reusing version {existing}")
        return MaterializeResult(
            metadata={"version": existing, "reused": True, "fingerprint": print_},
            check_results=[
                AssetCheckResult(check_name=QUALITY_GATE, passed=ok, metadata={"verdict": why})
            ],  # fmt: skip
        )
    version = reg.new_version(print_)
    start = time.perf_counter()
    with reg.build(version, {"fingerprint": print_, "state": "training"}) as folder:
        summary = compare(settings, ("softmax",), base, folder, progress=False, temperatures=grid)
        (folder / "two_tower_softmax.pt").rename(folder / "checkpoint.pt")
        export_version(folder)  # the user tower as the server runs it (towers.export)
        metrics = json.loads((folder / "metrics.json").read_text())
        ok, why = _gate(metrics, current_metrics, pipeline.gate_tolerance)
    run = summary["runs"]["softmax"]
    reg.set_state(version, "staged" if ok else "rejected", gate=why,
                  temperature=run["temperature"], best_epoch=run["best_epoch"])  # fmt: skip
    folder = reg.path(version)
    table = (folder / "metrics.md").read_text()
    return MaterializeResult(
        metadata={
            "version": version,
            "reused": False,
            "fingerprint": print_,
            "temperature": run["temperature"],
            "best_epoch": run["best_epoch"],
            "val_recall@20_by_temperature": MetadataValue.json(
                {str(k): v for k, v in run["val_recall_by_temperature"].items()}
            ),
            "test_metrics": MetadataValue.md(table),
            "recall_at_k": _png((folder / "recall_at_k.png").read_bytes(), "recall@K"),
            "training_curve": _png((folder / "training_curves.png").read_bytes(), "curves"),
            "seconds": round(time.perf_counter() - start, 1),
        },
        check_results=[
            AssetCheckResult(check_name=QUALITY_GATE, passed=ok, metadata={"verdict": why})
        ],  # fmt: skip
    )


# --- embeddings ----------------------------------------------------------------------------
def _target_version(reg: Any) -> str | None:
    """The version a run works on: the newest staged one (trained, gate passed, waiting for
    promotion), else the current one."""
    return reg.latest_staged() or reg.current()


def _version_inputs(pipeline: PipelineSettings, registry: ModelRegistryResource) -> Any:
    """(settings, registry, version, model, encoder, as_of) for the target version, or None
    when there is no version yet."""
    from recsys.features import default_as_of
    from towers.train import load_checkpoint

    settings = pipeline.settings()
    reg = registry.registry()
    version = _target_version(reg)
    if version is None:
        return None
    model, encoder, _ = load_checkpoint(reg.path(version) / "checkpoint.pt")
    as_of = settings.as_of or default_as_of(settings.paths.dataset)
    return settings, reg, version, model, encoder, as_of


@asset(group_name="embeddings", deps=[two_tower_model], description="The catalogue through "
       "the item tower (features as of as_of) into the version's LanceDB table.")  # fmt: skip
def item_embeddings(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pandas as pd
    import pyarrow as pa

    from recsys.candidates import item_vectors
    from recsys.vectors import write_item_table

    inputs = _version_inputs(pipeline, registry)
    if inputs is None:
        return MaterializeResult(metadata={"status": "no model version to embed"})
    settings, _, version, model, encoder, as_of = inputs
    items = pd.read_parquet(settings.paths.dataset / "items.parquet")
    vectors = item_vectors(model, encoder, feast.store(), items.item_id.to_numpy(), as_of)
    attributes = pa.Table.from_pandas(items[["title", "genres", "release_year"]],
                                      preserve_index=False)  # fmt: skip
    info = write_item_table(
        lancedb.db_dir(), version, items.item_id.to_numpy(), vectors, attributes
    )
    return MaterializeResult(
        metadata={
            "version": version,
            "table": info.table,
            "rows": info.rows,
            "dimension": info.dim,
            "index_type": info.index_type,
            "build_seconds": round(info.build_seconds, 2),
        }  # fmt: skip
    )


@asset(group_name="embeddings", deps=[item_embeddings], description="Top-K unseen items per "
       "user from the version's vectors; pushed online when the version is current.")  # fmt: skip
def user_candidates(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pandas as pd

    from recsys import candidates
    from recsys.vectors import ItemIndex

    inputs = _version_inputs(pipeline, registry)
    if inputs is None:
        return MaterializeResult(metadata={"status": "no model version"})
    settings, reg, version, model, encoder, as_of = inputs
    index = ItemIndex.open(lancedb.db_dir(), version, mode="matrix")
    item_ids, vectors = index.item_ids, index.vectors
    interactions = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    store = feast.store()
    table = candidates.user_candidates(
        model, encoder, store, interactions, item_ids, vectors, as_of, version,
        k=pipeline.candidates_k,
    )  # fmt: skip
    candidates.write_table(table, reg.path(version) / "candidates.parquet")
    pushed = 0
    if version == reg.current():
        candidates.write_table(table, settings.paths.candidates / "user_candidates.parquet")
        pushed = candidates.push_online(store, table)
    return MaterializeResult(
        metadata={
            "version": version,
            "users": table.num_rows,
            "k": pipeline.candidates_k,
            "pushed_online": pushed,
        }  # fmt: skip
    )


# --- serving -------------------------------------------------------------------------------
@asset(group_name="serving", deps=[feast_registry], description="feast materialize: each "
       "user's and item's latest feature values as of as_of into the online store.")  # fmt: skip
def online_features(pipeline: PipelineSettings, feast: FeastResource) -> MaterializeResult:
    from recsys import store as feast_store
    from recsys.features import default_as_of

    settings = pipeline.settings()
    as_of = settings.as_of or default_as_of(settings.paths.dataset)
    start = time.perf_counter()
    store = feast_store.materialize(settings.paths, end=as_of, store=feast.store())
    return MaterializeResult(
        metadata={
            "materialized_until": str(as_of),
            "views": MetadataValue.json(feast_store.SERVING_VIEWS),
            "seconds": round(time.perf_counter() - start, 2),
            "online_store": str(store.config.online_store.path),
        }  # fmt: skip
    )


@asset(
    group_name="serving",
    deps=[two_tower_model, item_embeddings, user_candidates, online_features],
    description="Promotion: the staged version (gate passed, vectors and candidates "
    "complete) becomes current in one atomic switch; its candidates go online.",
)
def promoted_model(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pyarrow.parquet as pq

    from recsys import candidates
    from recsys.vectors import ItemIndex

    settings = pipeline.settings()
    reg = registry.registry()
    version = reg.latest_staged()
    current = reg.current()
    if version is None:
        return MaterializeResult(metadata={"current": current or "none",
                                           "status": "nothing new to promote"})  # fmt: skip
    # Consistency before the switch: the version's vectors and candidates are complete.
    index = ItemIndex.open(lancedb.db_dir(), version, mode="matrix")
    table = pq.read_table(reg.path(version) / "candidates.parquet")
    versions = set(table.column("model_version").to_pylist())
    if versions != {version}:
        raise RuntimeError(f"candidates of {version} name versions {versions}")
    candidates.write_table(table, settings.paths.candidates / "user_candidates.parquet")
    pushed = candidates.push_online(feast.store(), table)
    previous = reg.promote(version, reason="pipeline: quality gate passed")
    metrics = reg.metrics(version)["models"]
    return MaterializeResult(
        metadata={
            "current": version,
            "previous": previous or "none",
            "item_vectors": index.rows,
            "candidates_pushed_online": pushed,
            "test_recall@20": MetadataValue.json(
                {m: r["all"]["recall@20"] for m, r in metrics.items()}
            ),
        }
    )


ASSETS = [incoming_batch, dataset, features, feast_registry, training_set, two_tower_model,
          item_embeddings, user_candidates, online_features, promoted_model]  # fmt: skip
