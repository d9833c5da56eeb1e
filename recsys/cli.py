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
    from recsys.settings import Settings

    overrides = {
        key: value
        for key, value in {
            "data_dir": args.data_dir,
            "dataset": args.dataset,
            "as_of": args.as_of,
            "synthetic_interactions": args.synthetic_interactions,
            "synthetic_seed": args.seed,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


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


def _synth(args: argparse.Namespace) -> int:
    from recsys.datasets.synthetic import generate_synthetic

    args.out.mkdir(parents=True, exist_ok=True)
    print(generate_synthetic(args.out, args.interactions, seed=args.seed or 0))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from recsys.schema import DatasetValidationError, summarize, validate_dataset

    try:
        validate_dataset(args.folder)
    except DatasetValidationError as exc:
        print(f"invalid dataset: {exc}", file=sys.stderr)
        return 1
    print(summarize(args.folder))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="ingest, features, feast apply, training set, materialize")
    b.add_argument("--dataset", help="movielens-100k (default), synthetic, or a folder path")
    b.add_argument("--data-dir", type=Path, help="data folder (default: ./data)")
    b.add_argument("--as-of", help="pipeline 'now' (ISO 8601); default: after the last event")
    b.add_argument("--synthetic-interactions", type=int, help="size of the synthetic dataset")
    b.add_argument("--seed", type=int, help="seed of the synthetic dataset")
    b.add_argument("--no-materialize", action="store_true", help="skip the online store")
    b.set_defaults(func=_build)
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
