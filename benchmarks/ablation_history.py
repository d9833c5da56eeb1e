"""Ablation of the user tower's history encoder, on the VALIDATION window only.

For each built data folder (``recsys build``; its split's val_start / test_start are the
cut), each variant (``TowerConfig.history_encoder`` mean / gru / attention, with or without
the per-item ratings and times) is trained on the training split with early stopping on
validation recall@20, one run per temperature and seed; the table gives the best
temperature's validation recall@20 over all and warm users (mean over seeds, and the spread),
with the number of users, and the optimisation's examples per second (per-epoch time minus
validation scoring, as ``bench_training.py`` measures it). The test window is never read.

    python benchmarks/ablation_history.py --data-dir /tmp/ml /tmp/ml70 --epochs 10 \
        --variants mean gru attention gru-no-ratings gru-no-times --seeds 0 1

``--speed N``: instead, training throughput alone: one epoch per variant without validation,
the variants interleaved, N rounds (the cores may be shared: compare within a round).
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

# name -> TowerConfig overrides; every flag explicit, so a name means the same whatever the
# defaults.
ALL = {"history_ratings": True, "history_times": True}
VARIANTS = {
    "mean": {"history_encoder": "mean", **ALL},
    "gru": {"history_encoder": "gru", **ALL},
    "attention": {"history_encoder": "attention", **ALL},
    "gru-no-ratings": {"history_encoder": "gru", **ALL, "history_ratings": False},
    "gru-no-times": {"history_encoder": "gru", **ALL, "history_times": False},
    "gru-order-only": {"history_encoder": "gru", "history_ratings": False,
                       "history_times": False},
    "attention-no-ratings": {"history_encoder": "attention", **ALL, "history_ratings": False},
    "attention-no-times": {"history_encoder": "attention", **ALL, "history_times": False},
    # The default encoder (gru without ratings) with a recency-weighted loss.
    "gru-no-ratings-recency30": {"history_encoder": "gru", **ALL, "history_ratings": False,
                                 "recency_half_life_days": 30.0},
    "gru-no-ratings-recency90": {"history_encoder": "gru", **ALL, "history_ratings": False,
                                 "recency_half_life_days": 90.0},
}  # fmt: skip


def run(data_dir: Path, variant: str, temperature: float, seed: int, epochs: int, data) -> dict:
    from towers.config import TowerConfig
    from towers.train import evaluate_window, train

    cfg = replace(TowerConfig(), **VARIANTS[variant], temperature=temperature, seed=seed,
                  epochs=epochs)  # fmt: skip
    result = train(cfg, data, progress=False)
    started = time.perf_counter()
    metrics = evaluate_window(result.model, data.val)
    scoring = time.perf_counter() - started
    ends = [h["seconds"] for h in result.history]
    train_seconds = ends[-1] - scoring * len(ends)
    n = len(data.train_items["item"])
    return {
        "data": str(data_dir), "variant": variant, "temperature": temperature, "seed": seed,
        "best_epoch": result.best_epoch, "epochs_run": len(ends),
        "val_all_recall@20": metrics["all"]["recall@20"],
        "val_warm_recall@20": metrics["warm"]["recall@20"],
        "examples_per_second": round(n * len(ends) / max(train_seconds, 1e-9)),
    }  # fmt: skip


def speed(data_dir: Path, variants: list[str], rounds: int, data) -> None:
    from towers.config import TowerConfig
    from towers.train import train

    data = replace(data, val=None)
    n = len(data.train_items["item"])
    for k in range(rounds):
        for variant in variants:
            cfg = replace(TowerConfig(), **VARIANTS[variant], threads=1)
            result = train(cfg, data, progress=False, epochs=1)
            row = {"data": data_dir.name, "round": k, "variant": variant, "rows": n,
                   "examples_per_second": round(n / result.seconds)}  # fmt: skip
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, nargs="+", required=True)
    parser.add_argument("--variants", nargs="+", default=["mean", "gru", "attention"])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10, help="at most (early stopping)")
    parser.add_argument("--out", type=Path, help="JSON lines of every run, appended")
    parser.add_argument("--speed", type=int, metavar="ROUNDS", help="throughput only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np

    from recsys.settings import Settings
    from towers.data import load_source, tower_data

    table = []
    for data_dir in args.data_dir:
        data = tower_data(load_source(Settings(data_dir=data_dir), with_test=False))
        if args.speed:
            speed(data_dir, args.variants, args.speed, data)
            continue
        assert data.val is not None
        split = data.val.split
        users, warm = len(split.user_ids), int(np.sum(split.warm))
        for variant in args.variants:
            runs = []
            for seed in args.seeds:
                by_t = [run(data_dir, variant, t, seed, args.epochs, data)
                        for t in args.temperatures]  # fmt: skip
                for r in by_t:
                    if args.out:
                        with args.out.open("a") as f:
                            f.write(json.dumps(r) + "\n")
                runs.append(max(by_t, key=lambda r: r["val_all_recall@20"]))
            alls = [r["val_all_recall@20"] for r in runs]
            warms = [r["val_warm_recall@20"] for r in runs]
            row = {
                "data": data_dir.name, "variant": variant, "users": users, "warm": warm,
                "all": round(float(np.mean(alls)), 4), "all_range": [round(min(alls), 4),
                                                                      round(max(alls), 4)],
                "warm_r": round(float(np.mean(warms)), 4),
                "warm_range": [round(min(warms), 4), round(max(warms), 4)],
                "temperatures": [r["temperature"] for r in runs],
                "epochs": [r["best_epoch"] for r in runs],
                "examples_per_second": [r["examples_per_second"] for r in runs],
            }  # fmt: skip
            table.append(row)
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
