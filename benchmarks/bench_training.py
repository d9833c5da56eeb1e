"""Benchmark of two-tower training: throughput, time to converge, epoch time at scale.

For each dataset (MovieLens-100K, or synthetic of a given size) the foundation pipeline is
built once (cached under --work), then, in this process:

- ``load``: reading the training set and the validation window's features through Feast
  (encoded once, then cached in the data folder as ``bench_tower_data.pt``, so that every
  repeat measures training, not Feast);
- one training run with the default config and early stopping on validation recall@20:
  epochs run, the best epoch, wall time to the end of the best epoch ("time to converge",
  validation scoring included) and to the end of the run;
- throughput: training examples per second of the optimisation steps alone (no scoring);
- the work behind it: the matrix products' floating-point operations per example
  (``torch.utils.flop_counter`` over one step), the rate they ran at, and this machine's
  large-GEMM rate on the same threads. Their ratio, GEMM GFLOP/s / MFLOP per example, is a
  ceiling on examples/s that no tuning of the loop can pass: only less work per example can.

At sizes above --full-max interactions only --epochs-at-scale epochs run (epoch time and
throughput; convergence is not waited for).

    python benchmarks/bench_training.py --sizes 0 1000000

Before/after, side by side: ``--before PATH`` (a checkout of the older code, e.g.
``git archive <commit> | tar -x -C PATH``) runs each measurement in a fresh process, for
the older code and this one in turn, ``--repeats`` times, at each ``--threads`` count (0 =
the code's default). Each line also carries the machine's CPU steal and the share of CPU
time other processes used during the run (from /proc/stat), since the cores may be shared.

    python benchmarks/bench_training.py --sizes 1000000 --before /tmp/base --repeats 3 \
        --threads 0 1

Independent runs at once: ``--concurrent N`` starts N measurements of this code together, each
in its own process at ``--threads`` (one count), alone first, then the N together,
``--repeats`` times: what a second core adds to runs that share nothing (tuning candidates, a
refit), against what a second thread or a DDP process adds to one run.

    python benchmarks/bench_training.py --sizes 1000000 --concurrent 2 --threads 1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
# --code PATH: the checkout whose code is measured (this one by default), imported first.
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else ROOT
sys.path.insert(0, str(CODE.resolve()))

from towers.config import TowerConfig as TowerConfigDefault  # noqa: E402

if TYPE_CHECKING:
    from towers.data import TowerData


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


def cpu_ticks() -> list[int]:
    """The machine's aggregate CPU counters (user ... steal), in clock ticks."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def machine(before: list[int], own_seconds: float, wall: float) -> dict:
    """Steal and other processes' CPU use between `before` and now, as % of all cores."""
    delta = [b - a for a, b in zip(before, cpu_ticks(), strict=True)]
    total, tick = max(sum(delta), 1), os.sysconf("SC_CLK_TCK")
    busy = sum(delta) - delta[3] - delta[4] - delta[7]  # minus idle, iowait, steal
    cores = os.cpu_count() or 1
    return {
        "steal_%": round(100 * delta[7] / total, 1),
        "others_cpu_%": round(100 * max(busy / tick - own_seconds, 0) / (wall * cores), 1),
        "loadavg_1m": os.getloadavg()[0],
    }


def step_flops(cfg: TowerConfigDefault, tower: TowerData) -> tuple[float, float]:
    """Floating-point operations of the matrix products (torch.utils.flop_counter: mm, addmm,
    bmm, the GRU's, the attention's) in one training step's forward and backward, per
    example of a full batch: in all, and in the user tower's history block. Elementwise work
    (activations, softmax, the optimizer) is not counted, so it is a lower bound on the work
    of a step. NaN for code without ``towers.train.Training`` (an older checkout under
    ``--before``)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        from towers.train import Training, _loss
    except ImportError:
        return math.nan, math.nan

    run = Training(cfg, tower, progress=False)
    run.model.train()
    rows = slice(0, run.cfg.batch_size)
    with FlopCounterMode(display=False) as counter:
        _loss(run.model, tower, rows, run.cfg, run.gen, run.sampler).backward()
    history = sum(counter.get_flop_counts().get("UserTower.history", {}).values())
    return counter.get_total_flops() / run.cfg.batch_size, history / run.cfg.batch_size


def gemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate, GFLOP/s, on ``threads`` torch threads: the
    best of ``repeats`` (n x n) @ (n x n) products, the most a training step's products can
    reach here (theirs are far smaller)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def with_history(tower: TowerData, length: int) -> TowerData:
    """The encoded rows with only their ``length`` newest history items (the feature keeps
    them newest first): the work per row of rows encoded at that length. Only the history
    inputs' normalisation, fitted over the positions kept, differs, so the validation recall
    is not quite that of a model trained at that length (benchmarks/ablation_user_ids.py
    measures that)."""

    def cut(batch: dict) -> dict:
        return {k: v[:, :length] if k in ("history", "history_feats") else v
                for k, v in batch.items()}  # fmt: skip

    val = None if tower.val is None else replace(tower.val, users=cut(tower.val.users))
    return replace(tower, train_users=cut(tower.train_users), val=val, test=None)


def measure(data: Path, epochs: int | None, temperature: float, threads: int = 0,
            overrides: dict | None = None) -> dict:  # fmt: skip
    import torch

    from recsys.settings import Settings
    from towers.config import TowerConfig
    from towers.data import load_source, tower_data
    from towers.train import train

    start = time.perf_counter()
    cache = data / "bench_tower_data.pt"  # the encoded rows, shared by every measurement
    if cache.exists():
        tower = torch.load(cache, weights_only=False)  # written below, by this script
    else:
        tower = tower_data(load_source(Settings(data_dir=data), with_test=False))
        torch.save(tower, cache)
    load = time.perf_counter() - start
    cfg = replace(TowerConfig(), temperature=temperature, **(overrides or {}))
    if cfg.history != TowerConfig.history:
        tower = with_history(tower, cfg.history)
    cfg = cfg if epochs is None else replace(cfg, epochs=epochs)
    cfg = replace(cfg, threads=threads) if threads else cfg
    ticks, cpu, wall = cpu_ticks(), time.process_time(), time.perf_counter()
    result = train(cfg, tower, progress=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
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
    flops, history_flops = step_flops(cfg, tower)  # per example
    examples_per_second = n * len(history) / max(train_seconds, 1e-9)
    peak = gemm_gflops(torch.get_num_threads())
    return {
        "config": overrides or {},
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
        "examples_per_second": round(examples_per_second),
        # The products' work per example, the rate they ran at, and this machine's large-GEMM
        # rate on the same threads: examples/s cannot pass gemm_gflops / mflop_per_example.
        "matmul_mflop_per_example": round(flops / 1e6, 3),
        "history_block_mflop_per_example": round(history_flops / 1e6, 3),
        "matmul_gflops_achieved": round(flops * examples_per_second / 1e9, 1),
        "gemm_gflops": round(peak, 1),
        "examples_per_second_ceiling": peak * 1e9 // flops if flops > 0 else math.nan,
        "train_cpu_seconds": round(cpu, 1),
        **machine(ticks, cpu, wall),
    }


def _one_command(args: argparse.Namespace, size: int, code: Path, threads: int) -> list[str]:
    """The command of one measurement in its own process (``--one``)."""
    return [sys.executable, __file__, "--one", str(size), "--code", str(code),
            "--threads", str(threads), "--work", str(args.work),
            "--temperature", str(args.temperature), "--full-max", str(args.full_max),
            "--epochs-at-scale", str(args.epochs_at_scale),
            "--config", json.dumps(args.config)]  # fmt: skip


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.splitlines()[-1])


def concurrent(args: argparse.Namespace) -> list[dict]:
    """Per size and repeat: one measurement alone, then ``args.concurrent`` started together
    (each its own process); the together runs' examples/s are summed per round."""
    results = []
    threads = args.threads[0]
    for size in args.sizes:
        prepare(args.work, size)
        for repeat in range(1, args.repeats + 1):
            command = _one_command(args, size, ROOT, threads)
            alone = _last_json(subprocess.run(command, check=True, capture_output=True,
                                              text=True).stdout)  # fmt: skip
            results.append({"mode": "alone", "repeat": repeat, **alone})
            print(json.dumps(results[-1]), flush=True)
            procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                     for _ in range(args.concurrent)]  # fmt: skip
            for i, proc in enumerate(procs):
                out, _ = proc.communicate()
                if proc.returncode:
                    raise RuntimeError(f"concurrent measurement {i} exited {proc.returncode}")
                r = {"mode": f"{args.concurrent} at once", "repeat": repeat, "process": i,
                     **_last_json(out)}  # fmt: skip
                results.append(r)
                print(json.dumps(r), flush=True)
    print(f"\n{'dataset':>18} {'rep':>3} {'mode':>10} {'ex/s each':>20} {'ex/s in all':>11} "
          f"{'others %':>8}")  # fmt: skip
    for size in args.sizes:
        for repeat in range(1, args.repeats + 1):
            for mode in ("alone", f"{args.concurrent} at once"):
                rs = [r for r in results if r["dataset"] == name(size)
                      and r["repeat"] == repeat and r["mode"] == mode]  # fmt: skip
                each = [r["examples_per_second"] for r in rs]
                print(f"{name(size):>18} {repeat:>3} {mode:>10} "
                      f"{' '.join(f'{x:,}' for x in each):>20} {sum(each):>11,} "
                      f"{max(r['others_cpu_%'] for r in rs):>8}")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "training_concurrent.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def side_by_side(args: argparse.Namespace) -> list[dict]:
    """Each (repeat, threads, code) measurement in its own process, the codes interleaved
    so that both see the same machine load."""
    results = []
    codes = [("before", args.before.resolve()), ("after", ROOT)]
    for size in args.sizes:
        prepare(args.work, size)
        for repeat in range(1, args.repeats + 1):
            for threads in args.threads:
                for label, code in codes:
                    command = _one_command(args, size, code, threads)
                    out = subprocess.run(command, check=True, capture_output=True, text=True)
                    line = _last_json(out.stdout)
                    r = {"code": label, "repeat": repeat, **line}
                    results.append(r)
                    print(json.dumps(r), flush=True)
    return results


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
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="torch threads to measure at (0 = the code's default)")  # fmt: skip
    parser.add_argument("--before", type=Path, help="older checkout to compare with")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", type=json.loads, default={}, metavar="JSON",
                        help='TowerConfig overrides measured, e.g. \'{"history": 10}\'')  # fmt: skip
    parser.add_argument("--concurrent", type=int, default=0,
                        help="measure N independent runs at once against one alone")  # fmt: skip
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout measured (internal)")
    parser.add_argument("--one", type=int, help="measure this one size (internal)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one is not None:  # one measurement, for side_by_side: a JSON line on stdout
        epochs = None if args.one <= args.full_max else args.epochs_at_scale
        data = prepare(args.work, args.one)
        r = measure(data, epochs, args.temperature, args.threads[0], args.config)
        print(json.dumps({"dataset": name(args.one), "threads_asked": args.threads[0], **r}))
        return
    if args.before is not None:
        report_side_by_side(side_by_side(args))
        return
    if args.concurrent:
        concurrent(args)
        return
    results = []
    for size in args.sizes:
        data = prepare(args.work, size)
        epochs = None if size <= args.full_max else args.epochs_at_scale
        for threads in args.threads:
            r = {"dataset": name(size), "temperature": args.temperature,
                 **measure(data, epochs, args.temperature, threads, args.config)}  # fmt: skip
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'dataset':>18} {'rows':>9} {'thr':>3} {'epochs':>6} {'best':>4} {'to best s':>9} "
          f"{'total s':>8} {'epoch s':>8} {'ex/s':>8} {'val R@20':>8} {'MFLOP/ex':>8} "
          f"{'GFLOP/s':>7} {'GEMM GFLOP/s':>12} {'ceiling ex/s':>12}")  # fmt: skip
    for r in results:
        print(f"{r['dataset']:>18} {r['rows']:>9,} {r['threads']:>3} {r['epochs_run']:>6} "
              f"{r['best_epoch']:>4} {r['seconds_to_best_epoch']:>9.1f} {r['seconds_total']:>8.1f} "
              f"{r['epoch_seconds']:>8.2f} {r['examples_per_second']:>8,} "
              f"{r['best_val_recall@20']:>8.4f} {r['matmul_mflop_per_example']:>8.3f} "
              f"{r['matmul_gflops_achieved']:>7.1f} {r['gemm_gflops']:>12.1f} "
              f"{r['examples_per_second_ceiling']:>12,.0f}")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def name(size: int) -> str:
    return "movielens-100k" if size == 0 else f"synthetic-{size}"


def report_side_by_side(results: list[dict]) -> None:
    """Every run, then per (dataset, code, threads) the median and range of examples/s."""
    print(f"\n{'dataset':>18} {'code':>6} {'thr':>3} {'rep':>3} {'epoch s':>8} {'ex/s':>8} "
          f"{'steal %':>7} {'others %':>8} {'load':>5}")  # fmt: skip
    for r in results:
        print(f"{r['dataset']:>18} {r['code']:>6} {r['threads']:>3} {r['repeat']:>3} "
              f"{r['epoch_seconds']:>8.2f} {r['examples_per_second']:>8,} {r['steal_%']:>7} "
              f"{r['others_cpu_%']:>8} {r['loadavg_1m']:>5.2f}")  # fmt: skip
    groups: dict[tuple, list[int]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["code"], r["threads"]), []).append(
            r["examples_per_second"]
        )
    print()
    for (dataset, code, threads), rates in groups.items():
        rates = sorted(rates)
        print(f"{dataset} {code} {threads} thread(s): median {rates[len(rates) // 2]:,} ex/s "
              f"(range {rates[0]:,}-{rates[-1]:,}, {len(rates)} runs)")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "training_side_by_side.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
