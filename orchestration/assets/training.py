"""Training assets: the point-in-time training set and a new model version behind
its quality gate."""

import json
import time
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration.assets.common import QUALITY_GATE, builder_run, png
from orchestration.resources import (
    FeastResource,
    ModelRegistryResource,
    PipelineSettings,
)


@asset(group_name="training", deps=["feast_registry"], description="Point-in-time training "
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


@asset(
    group_name="training",
    deps=["training_set"],
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

    from recsys.gate import quality_gate
    from recsys.registry import GATED, REJECTED
    from towers.compare import compare
    from towers.config import TowerConfig
    from towers.export import export_version

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
    print_ = _fingerprint(settings, base.to_dict(), grid)
    existing = None if pipeline.force_retrain else reg.find(print_)
    current = reg.current()
    current_metrics = reg.metrics(current) if current else None
    if existing is not None:  # the current version, trained from these data and config
        ok, why = quality_gate(reg.metrics(existing), None, pipeline.gate_tolerance)
        context.log.info(f"data and config unchanged: reusing version {existing}")
        return MaterializeResult(
            metadata={"version": existing, "reused": True, "fingerprint": print_,
                      "abandoned": MetadataValue.json(abandoned)},  # fmt: skip
            check_results=[
                AssetCheckResult(check_name=QUALITY_GATE, passed=ok, metadata={"verdict": why})
            ],  # fmt: skip
        )
    version = reg.new_version(print_)
    start = time.perf_counter()
    info: dict[str, Any] = {"fingerprint": print_}  # version.json, written when complete
    with reg.build(version, run_id, info) as folder:
        summary = compare(settings, ("softmax",), base, folder, progress=False, temperatures=grid)
        (folder / "two_tower_softmax.pt").rename(folder / "checkpoint.pt")
        export_version(folder)  # the user tower as the server runs it (towers.export)
        run = summary["runs"]["softmax"]
        info.update(temperature=run["temperature"], best_epoch=run["best_epoch"])
        metrics = json.loads((folder / "metrics.json").read_text())
    ok, why = quality_gate(metrics, current_metrics, pipeline.gate_tolerance)
    reg.transition(version, GATED if ok else REJECTED, run_id, f"quality gate {why}")
    folder = reg.path(version)
    table = (folder / "metrics.md").read_text()
    return MaterializeResult(
        metadata={
            "version": version,
            "reused": False,
            "state": GATED if ok else REJECTED,
            "abandoned": MetadataValue.json(abandoned),
            "fingerprint": print_,
            "temperature": run["temperature"],
            "best_epoch": run["best_epoch"],
            "val_recall@20_by_temperature": MetadataValue.json(
                {str(k): v for k, v in run["val_recall_by_temperature"].items()}
            ),
            "test_metrics": MetadataValue.md(table),
            "recall_at_k": png((folder / "recall_at_k.png").read_bytes(), "recall@K"),
            "training_curve": png((folder / "training_curves.png").read_bytes(), "curves"),
            "seconds": round(time.perf_counter() - start, 1),
        },
        check_results=[
            AssetCheckResult(check_name=QUALITY_GATE, passed=ok, metadata={"verdict": why})
        ],  # fmt: skip
    )
