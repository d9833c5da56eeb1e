"""Command line: ``recsys build`` runs the foundation pipeline; ``recsys synth`` and
``recsys validate`` work on dataset folders. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    from recsys.settings import settings_from

    return settings_from(
        data_dir=args.data_dir,
        dataset=args.dataset,
        as_of=args.as_of,
        synthetic_interactions=args.synthetic_interactions,
        synthetic_seed=args.seed,
    )


def _build(args: argparse.Namespace) -> int:
    from recsys.pipeline import build

    result = build(_settings(args), materialize_online=not args.no_materialize)
    summary = asdict(result.training_set)
    print(
        json.dumps(
            {"dataset": asdict(result.dataset), "training_set": summary, "seconds": result.seconds},
            indent=2,
            default=str,
        )
    )
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    """The whole Dagster graph (job ``full_pipeline``), in this process, on the Dagster
    instance of ``$DAGSTER_HOME`` when set (runs then show in the UI), else an ephemeral one."""
    import os

    from dagster import DagsterInstance, materialize

    from orchestration.assets import ASSETS
    from orchestration.resources import PipelineSettings, resources_for
    from recsys.registry import ModelRegistry

    pipeline = PipelineSettings(
        data_dir=str(args.data_dir) if args.data_dir else None, dataset=args.dataset,
        as_of=args.as_of, synthetic_interactions=args.synthetic_interactions,
        synthetic_seed=args.seed, force_retrain=args.force_retrain,
    )  # fmt: skip
    settings = pipeline.settings()
    resources = resources_for(pipeline)
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    result = materialize(ASSETS, resources=resources, instance=instance, raise_on_error=False)
    failed = [f"{e.asset_key.to_user_string()}:{e.check_name}"
              for e in result.get_asset_check_evaluations() if not e.passed]  # fmt: skip
    registry = ModelRegistry(settings.paths.models)
    current = registry.current()
    metrics = registry.metrics(current).get("models", {}) if current else {}
    print(json.dumps({
        "success": result.success, "failed_checks": failed, "current_version": current,
        "test_recall@20": {m: {s: r[s]["recall@20"] for s in ("all", "warm", "cold")}
                           for m, r in metrics.items()},
    }, indent=2))  # fmt: skip
    return 0 if result.success and not failed else 1


def _synth(args: argparse.Namespace) -> int:
    from recsys.datasets.synthetic import generate_synthetic

    args.out.mkdir(parents=True, exist_ok=True)
    print(generate_synthetic(args.out, args.interactions, seed=args.seed or 0))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recsys.schema import DatasetValidationError, summarize, validate_dataset

    try:
        casts = validate_dataset(args.folder)
    except DatasetValidationError as exc:
        print(f"invalid dataset: {exc}", file=sys.stderr)
        return 1
    # The casts ingest would apply, so a user sees them before ingesting.
    print(replace(summarize(args.folder), casts=[c.as_dict() for c in casts]))
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="movielens-100k (default), synthetic, or a folder path")
    p.add_argument("--data-dir", type=Path, help="data folder (default: ./data)")
    p.add_argument("--as-of", help="pipeline 'now' (ISO 8601); default: after the last event")
    p.add_argument("--synthetic-interactions", type=int, help="size of the synthetic dataset")
    p.add_argument("--seed", type=int, help="seed of the synthetic dataset")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="ingest, features, feast apply, training set, materialize")
    _data_arguments(b)
    b.add_argument("--no-materialize", action="store_true", help="skip the online store")
    b.set_defaults(func=_build)
    r = sub.add_parser("pipeline", help="the whole Dagster graph: ingest to promotion")
    _data_arguments(r)
    r.add_argument("--force-retrain", action="store_true",
                   help="train a new version even if data and config did not change")  # fmt: skip
    r.set_defaults(func=_pipeline)
    s = sub.add_parser("synth", help="write a synthetic canonical dataset folder")
    s.add_argument("--interactions", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_synth)
    v = sub.add_parser("validate", help="check a dataset folder against the canonical schema")
    v.add_argument("folder", type=Path)
    v.set_defaults(func=_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
