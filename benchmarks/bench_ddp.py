"""Benchmark of distributed training (towers.ddp): examples/s and epoch time of one process
against 2 DDP processes under torchrun, on the same encoded rows, side by side in one run.

Variants, each measured in a fresh process, alternating within every round so that all see
the same machine load:
- ``1p x 1t``: the single-process trainer (``towers.train.train``) on one torch thread;
- ``1p x 2t``: the same on two threads (the machine's two cores);
- ``2p x 1t``: ``towers.ddp.train_distributed``, 2 gloo processes of one thread each.

Each trains ``--epochs`` fixed epochs with the default config (no validation scoring).
``epoch s`` is the training loop's own time (rank 0's for DDP); ``ex/s`` the training rows
over it; ``wall s`` the whole call, with DDP's job file, torchrun start and data loading.
The data folder (a synthetic build, cached under --work) is built once, as in
bench_training.py, and its encoded rows cached there too.

    python benchmarks/bench_ddp.py --size 1000000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_training import prepare  # noqa: E402

VARIANTS = {"1p x 1t": (1, 1), "1p x 2t": (1, 2), "2p x 1t": (2, 1)}  # (processes, threads)


def measure(data: Path, variant: str, epochs: int) -> dict:
    """One variant's run in this process: a JSON-able record."""
    import torch

    from recsys.settings import Settings
    from towers.config import TowerConfig
    from towers.data import load_source, tower_data
    from towers.ddp import Launch, train_distributed
    from towers.train import train

    cache = data / "bench_tower_data.pt"  # the encoded rows (shared with bench_training.py)
    if cache.exists():
        tower = torch.load(cache, weights_only=False)  # written below, by these scripts
    else:
        tower = tower_data(load_source(Settings(data_dir=data), with_test=False))
        torch.save(tower, cache)
    tower = replace(tower, val=None)  # training alone: no validation scoring per epoch
    processes, threads = VARIANTS[variant]
    cfg = replace(TowerConfig(), threads=threads)
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    if processes == 1:
        result = train(cfg, tower, progress=False, epochs=epochs)
    else:
        result = train_distributed(cfg, tower, Launch(processes=processes), epochs=epochs)
    wall = time.perf_counter() - wall
    rows = len(tower.train_items["item"])
    seconds = result.history[-1]["seconds"]  # the epochs' own time, summed
    return {"variant": variant, "rows": rows, "epochs": epochs,
            "epoch_seconds": round(seconds / epochs, 2),
            "examples_per_second": round(rows * epochs / seconds),
            "wall_seconds": round(wall, 1), "final_loss": round(result.history[-1]["loss"], 4),
            "loadavg_1m_before": load}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="synthetic interactions")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "train")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=list(VARIANTS), help="measure one variant (internal)")
    args = parser.parse_args()
    data = prepare(args.work, args.size)
    if args.one:
        print(json.dumps(measure(data, args.one, args.epochs)))
        return
    results = []
    for round_ in range(1, args.rounds + 1):
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--one", variant, "--size", str(args.size),
                       "--work", str(args.work), "--epochs", str(args.epochs)]  # fmt: skip
            out = subprocess.run(command, check=True, capture_output=True, text=True)
            r = {"round": round_, **json.loads(out.stdout.splitlines()[-1])}
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'variant':>8} {'rows':>9} {'epoch s':>8} {'ex/s':>8} {'wall s':>7} (per run)")
    for r in results:
        print(f"{r['variant']:>8} {r['rows']:>9,} {r['epoch_seconds']:>8.2f} "
              f"{r['examples_per_second']:>8,} {r['wall_seconds']:>7.1f}")  # fmt: skip
    print()
    for variant in VARIANTS:
        rates = sorted(r["examples_per_second"] for r in results if r["variant"] == variant)
        epoch = sorted(r["epoch_seconds"] for r in results if r["variant"] == variant)
        print(f"{variant}: median {rates[len(rates) // 2]:,} ex/s (range {rates[0]:,}-"
              f"{rates[-1]:,}), epoch {epoch[0]:.1f}-{epoch[-1]:.1f} s, {len(rates)} runs")  # fmt: skip
    out = args.work / f"ddp-{args.size}.json"
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
