"""Helpers shared by the asset modules: check names, blocking check specs, inline plots,
Great Expectations reports as Dagster check results, the run that owns a model version."""

import base64
import re
from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from recsys.features.catalog import CATALOG
from recsys.incoming_checks import catalogue_check_names

VIEWS = tuple(view.name for view in CATALOG.views)
VIEW_KEYS = {view.name: view.key for view in CATALOG.views}
# One blocking check per Great Expectations outcome on an incoming batch
# (recsys.validation.tables.validate_interactions), so a corruption fails the check that names it.
BATCH_CHECKS = (
    "interactions readable", "interactions not empty", "interactions columns",
    "interactions.user_id type", "interactions.item_id type", "interactions.rating type",
    "interactions.event_timestamp type", "interactions.user_id not null",
    "interactions.item_id not null", "interactions.event_timestamp not null",
    "interactions events unique", "interactions.rating in range",
    "interactions.event_timestamp not after as_of", "interactions.user_id known",
    "interactions.item_id known", "interactions.rating mean in range",
    # Only for a dataset whose events carry their own ids (recsys.schema.EVENT_ID).
    "interactions.event_id type", "interactions.event_id not null",
    # The batch's user and item versions (recsys.incoming_checks).
    *catalogue_check_names(),
)  # fmt: skip
DATASET_TABLES = ("interactions", "users", "items")
QUALITY_GATE = "quality_gate"


def check_name(name: str) -> str:
    """A GX outcome name as a Dagster check name ([a-z0-9_])."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def blocking_specs(asset_name: str, names: Any, what: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(check_name(n), asset=asset_name, blocking=True, description=f"{what}: {n}")
        for n in names
    ]


def png(data: bytes, alt: str) -> MetadataValue:
    """A PNG shown inline in the Dagster UI (markdown with a data URI)."""
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})")


def report_checks(report: Any, names: Any) -> list[AssetCheckResult]:
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


def audit_checks(audit: Any) -> list[AssetCheckResult]:
    """One check result per blocking check of a `recsys.audit.Audit` (the checks ran on the
    staged artifact before it was published; a failure means it was not published)."""
    results = []
    for name, passed in audit.checks.items():
        detail = audit.details.get(name, {})
        metadata: dict[str, Any] = {
            "failed": MetadataValue.json(detail.get("failed", {})),
            "published": passed and audit.passed,
        }
        for key, value in detail.items():
            if key not in ("failed", "outcomes"):
                metadata[key] = (
                    value if isinstance(value, int | float) else MetadataValue.json(value)
                )
        if audit.kept_at:
            metadata["rejected_data_kept_at"] = MetadataValue.path(audit.kept_at)
        results.append(AssetCheckResult(check_name=check_name(name), passed=passed,
                                         severity=AssetCheckSeverity.ERROR,
                                         metadata=metadata))  # fmt: skip
    return results


def builder_run(context: Any) -> str:
    """The id under which this run builds and promotes a model version: the run's root run,
    so a re-execution of a failed run (Dagster's retry from failure) may finish the version
    its original built, and no other run can (recsys.registry)."""
    return str(context.run.root_run_id or context.run.run_id)


def recall_metadata(metrics: dict[str, Any], k: int = 20) -> dict[str, float]:
    """Test recall@k of every model and user group as numeric metadata
    (``test_recall@20/<model>/<group>``): the UI plots each over materializations, so the
    versions' quality reads as curves."""
    out = {}
    for model, groups in metrics.get("models", {}).items():
        for group, values in groups.items():
            value = values.get(f"recall@{k}") if isinstance(values, dict) else None
            if isinstance(value, int | float):
                out[f"test_recall@{k}/{model}/{group}"] = round(float(value), 4)
    return out
