"""Benchmark of two-tower training: throughput, time to converge, epoch time at scale.

For each dataset (MovieLens-100K, or synthetic of a given size) the foundation pipeline is
built once (cached under --work), then, in this process:

- ``load``: reading the training set and the validation window's features through Feast;
- one training run with the default config and early stopping on validation recall@20:
  epochs run, the best epoch, wall time to the end of the best epoch ("time to converge",
  validation scoring included) and to the end of the run;
- throughput: training examples per second of the optimisation steps alone (no scoring).

At sizes above --full-max interactions only --epochs-at-scale epochs run (epoch time and
throughput; convergence is not waited for).

    python benchmarks/bench_training.py --sizes 0 1000000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from towers.config import TowerConfig as TowerConfigDefault  # noqa: E402


def prepare(work: Path, size: int) -> Path:
    """The built data folder for one size (0 = MovieLens-100K); built once, then reused."""
    from recsys.pipeline import build
    from recsys.settings import Settings

    name = "movielens-100k" if size == 0 else f"synthetic-{size}"
    data = work / name
    if not (data / "training" / "summary.json").exists():
        dataset = "movielens-100k" if size == 0 else "synthetic"
        build(
            Settings(data_dir=data, dataset=dataset, synthetic_interactions=max(size, 1000)),
            materialize_online=False,
        )
    return data


def measure(data: Path, epochs: int | None, temperature: float) -> dict:
    import torch

    from recsys.settings import Settings
    from towers.config import TowerConfig
    from towers.data import load_source, tower_data
    from towers.train import train

    start = time.perf_counter()
    tower = tower_data(load_source(Settings(data_dir=data), with_test=False))
    load = time.perf_counter() - start
    cfg = replace(TowerConfig(), temperature=temperature)
    cfg = cfg if epochs is None else replace(cfg, epochs=epochs)
    result = train(cfg, tower, progress=True)
    n = len(tower.train_items["item"])
    history = result.history
    # Throughput of the optimisation alone: per-epoch seconds minus the validation scoring,
    # timed separately on the final model.
    from towers.train import evaluate_window

    assert tower.val is not None
    t = time.perf_counter()
    evaluate_window(result.model, tower.val)
    scoring = time.perf_counter() - t
    ends = [h["seconds"] for h in history]
    steps = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    train_seconds = sum(steps) - scoring * len(history)
    return {
        "rows": n,
        "threads": torch.get_num_threads(),
        "load_seconds": round(load, 1),
        "epochs_run": len(history),
        "best_epoch": result.best_epoch,
        "best_val_recall@20": round(history[result.best_epoch - 1]["val"]["recall@20"], 4),
        "seconds_to_best_epoch": history[result.best_epoch - 1]["seconds"],
        "seconds_total": result.seconds,
        "epoch_seconds": round(sum(steps) / len(steps), 2),
        "scoring_seconds": round(scoring, 2),
        "examples_per_second": round(n * len(history) / max(train_seconds, 1e-9)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1_000_000],
                        help="synthetic interactions; 0 = MovieLens-100K")  # fmt: skip
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "train")
    parser.add_argument("--full-max", type=int, default=200_000,
                        help="above this many interactions, run only --epochs-at-scale")  # fmt: skip
    parser.add_argument("--epochs-at-scale", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=TowerConfigDefault.temperature,
                        help="softmax temperature (the pipeline picks it on validation; "
                        "MovieLens-100K: 1.0)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for size in args.sizes:
        data = prepare(args.work, size)
        epochs = None if size <= args.full_max else args.epochs_at_scale
        r = {"dataset": "movielens-100k" if size == 0 else f"synthetic-{size}",
             "temperature": args.temperature, **measure(data, epochs, args.temperature)}  # fmt: skip
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{'dataset':>18} {'rows':>9} {'epochs':>6} {'best':>4} {'to best s':>9} "
          f"{'total s':>8} {'epoch s':>8} {'ex/s':>8} {'val R@20':>8}")  # fmt: skip
    for r in results:
        print(f"{r['dataset']:>18} {r['rows']:>9,} {r['epochs_run']:>6} {r['best_epoch']:>4} "
              f"{r['seconds_to_best_epoch']:>9.1f} {r['seconds_total']:>8.1f} "
              f"{r['epoch_seconds']:>8.2f} {r['examples_per_second']:>8,} "
              f"{r['best_val_recall@20']:>8.4f}")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
