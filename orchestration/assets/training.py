"""Training assets: the point-in-time training set and a new model version behind
its quality gate (recsys.gate, on one window); when the two-tower fails it and no
two-tower is current, a fallback version (recsys.fallback) instead. The rules (reuse by
fingerprint, the gate, the fallback) are plain functions in ``evaluation.new_version``."""

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

from orchestration.assets.common import (
    QUALITY_GATE,
    audit_checks,
    blocking_specs,
    builder_run,
    png,
    recall_metadata,
)
from orchestration.resources import (
    FeastResource,
    ModelRegistryResource,
    PipelineSettings,
)
from recsys import fallback

# Blocking checks of the training set: what it reads (checked again, since a `retrain` run
# starts here) and what it wrote (checked in staging, before it is published).
TRAINING_CHECKS = (
    "dataset audited", "features audited", "features from the published dataset",
    "training set rows match entity rows", "training set keys not null",
    "training set splits not empty",
)  # fmt: skip


@asset(
    group_name="training",
    deps=["feast_registry"],
    check_specs=blocking_specs("training_set", TRAINING_CHECKS, "training set"),
    description="Point-in-time training rows through Feast (get_historical_features) with the "
    "temporal train/val/test split; its inputs are re-checked first, and it is audited in "
    "staging before it is published.",
)
def training_set(
    context: AssetExecutionContext, feast: FeastResource, pipeline: PipelineSettings
) -> MaterializeResult:
    from recsys.audit import Audit, AuditFailed, audit_training_inputs
    from recsys.training_set import build_training_set

    settings = pipeline.settings()
    inputs = audit_training_inputs(settings.paths)
    not_run = {name: False for name in TRAINING_CHECKS if name not in inputs.checks}
    if not inputs.passed:
        context.log.error(f"training set not built: its inputs failed {inputs.failed}")
        skipped = Audit("training set", not_run, {n: {"failed": {"skipped": "inputs failed"}}
                                                  for n in not_run})  # fmt: skip
        return MaterializeResult(metadata={"published": False},
                                 check_results=audit_checks(inputs) + audit_checks(skipped))  # fmt: skip
    start = time.perf_counter()
    store = feast.store()
    try:
        summary = build_training_set(settings, store)
    except AuditFailed as failed:
        context.log.error(str(failed))
        return MaterializeResult(
            metadata={"published": False, "rejected_kept_at": str(failed.audit.kept_at)},
            check_results=audit_checks(inputs) + audit_checks(failed.audit),
        )
    from recsys.audit import read_audit

    audit = read_audit(settings.paths.training)
    assert audit is not None  # written beside the published training set
    return MaterializeResult(
        metadata={
            "rows": MetadataValue.json(summary.rows),
            **{f"rows/{split}": int(n) for split, n in summary.rows.items()},
            "users": MetadataValue.json(summary.users),
            "cold_test_users": summary.cold_test_users,
            "cuts": MetadataValue.json({k: str(v) for k, v in vars(summary.cuts).items()}),
            "feature_coverage": MetadataValue.json(summary.feature_coverage),
            # The Feast offline store that ran the point-in-time join (DuckDB's or Spark's).
            "offline_store": store.config.offline_store.type,
            "published": True,
            "seconds": round(time.perf_counter() - start, 2),
        },
        check_results=audit_checks(inputs) + audit_checks(audit),
    )


@asset(
    group_name="training",
    deps=["training_set"],
    check_specs=[
        AssetCheckSpec(
            QUALITY_GATE,
            asset="two_tower_model",
            blocking=True,
            description="Test recall@20 not significantly below the best baseline, and "
            "not significantly below the current version re-scored on the same test window "
            "(paired bootstrap over users, 95% interval; recsys.gate).",
        )
    ],  # fmt: skip
    description="A new model version: temperature and epochs chosen on validation, scored "
    "on the test window against every baseline (trained on the train split), and the model "
    "served refit on all data up to as_of with those choices.",
)
def two_tower_model(
    context: AssetExecutionContext, pipeline: PipelineSettings, registry: ModelRegistryResource
) -> MaterializeResult:
    from dataclasses import replace

    from evaluation.new_version import (
        build_fallback,
        fingerprint_of,
        gate_version,
        needs_fallback,
        reused_decision,
        train_version,
    )
    from recsys.registry import GATED, REJECTED
    from towers.config import TowerConfig

    settings = pipeline.settings()
    reg = registry.registry()
    run_id = builder_run(context)
    # One writing run at a time: what another run left unfinished, it will never finish.
    abandoned = reg.abandon_unfinished(run_id)
    if abandoned:
        context.log.warning(f"rejected versions abandoned by ended runs: {abandoned}")
    removed = reg.clean_staging(run_id)
    if removed:
        context.log.warning(f"removed unfinished versions of killed runs: {removed}")
    base = replace(TowerConfig(), epochs=pipeline.max_epochs)
    grid = pipeline.temperature_grid()
    print_ = fingerprint_of(settings, base.to_dict(), grid)
    existing = None if pipeline.force_retrain else reg.find(print_)
    current = reg.current()
    if existing is not None:  # the current version, trained from these data and config
        decision = reused_decision(reg, existing, pipeline.gate_against_baseline)
        context.log.info(f"data and config unchanged: reusing version {existing}")
        check = AssetCheckResult(check_name=QUALITY_GATE, passed=decision.passed,
                                 metadata=decision.metadata())  # fmt: skip
        if fallback.is_fallback(reg.info(existing)):  # its two-tower failed: it still does
            check = _fallback_check(decision, existing, reg.info(existing)["reason"])
        reused = {"version": existing, "reused": True, "fingerprint": print_,
                  "abandoned": MetadataValue.json(abandoned),
                  **recall_metadata(reg.metrics(existing))}  # fmt: skip
        return MaterializeResult(metadata=reused, check_results=[check])
    start = time.perf_counter()
    new = train_version(settings, reg, run_id, print_, base, grid)
    version, run = new.version, new.run
    decision, judged = gate_version(settings, reg, run_id, version, current, new.metrics,
                                    pipeline.gate_resamples,
                                    pipeline.gate_against_baseline)  # fmt: skip
    ok = decision.passed
    context.log.info(f"quality gate: {decision.outcome}; {decision.verdict}")
    folder = reg.path(version)
    table = (folder / "metrics.md").read_text()
    # A candidate rejected while the current version is kept (no regression) warns only.
    severity = AssetCheckSeverity.WARN if decision.keeps_current else AssetCheckSeverity.ERROR
    check = AssetCheckResult(check_name=QUALITY_GATE, passed=ok, severity=severity,
                             metadata={**decision.metadata(), **judged})  # fmt: skip
    outcome, built = decision.outcome, None
    if needs_fallback(decision, reg, current):
        built, why = build_fallback(settings, reg, run_id, print_, version)
        context.log.warning(f"fallback version {built} built: {why}")
        check = _fallback_check(decision, built, why, judged)
        outcome = f"{outcome}; fallback {built} built"
    return MaterializeResult(
        metadata={
            "version": version,
            "reused": False,
            "state": GATED if ok else REJECTED,
            "gate_outcome": outcome,
            "fallback_version": built or "none",
            "gate_verdict": decision.verdict,
            **judged,
            "abandoned": MetadataValue.json(abandoned),
            "fingerprint": print_,
            "temperature": run["temperature"],
            "best_epoch": run["best_epoch"],
            "evaluated": MetadataValue.json(new.info["evaluated"]),
            "served": MetadataValue.json(new.info["served"]),
            "recency_half_life_days": run["recency_half_life_days"],
            "val_recall@20_tried": MetadataValue.json(run["val_recall_tried"]),
            "popularity_prior": run["popularity_prior"],
            "val_recall@20_by_prior": MetadataValue.json(run["val_recall_by_prior"]),
            "test_metrics": MetadataValue.md(table),
            "recall_at_k": png((folder / "recall_at_k.png").read_bytes(), "recall@K"),
            "training_curve": png((folder / "training_curves.png").read_bytes(), "curves"),
            "seconds": round(time.perf_counter() - start, 1),
            # Wall time of each phase of towers.release (load, encode, baselines, tuning, ...).
            **{f"seconds/{phase}": s for phase, s in new.seconds.items()},
            **recall_metadata(new.metrics),
        },
        check_results=[check],
    )


def _fallback_check(decision: Any, version: str, why: str,
                    extra: dict[str, Any] | None = None) -> AssetCheckResult:  # fmt: skip
    """The gate failed for the two-tower, and a fallback is served: a warning (downstream
    runs, the run succeeds), not an error; the verdict says both."""
    return AssetCheckResult(
        check_name=QUALITY_GATE, passed=False, severity=AssetCheckSeverity.WARN,
        metadata={**decision.metadata(), **(extra or {}), "fallback_version": version,
                  "verdict": f"{decision.verdict}; serving fallback version {version} ({why})"},
    )  # fmt: skip
