"""Benchmark: wall time of ``recsys backtest``, per cut (and its steps) and in total.

Runs the command as a user would, in a fresh output folder per repeat, and reads each cut's
seconds from its ``backtest.json``; prints, per cut and step, the median and the range over
the repeats, then the command's total wall time. The MovieLens download cache
(``<repo>/data/raw``) is not needed when ``--dataset`` is a canonical folder.

    python benchmarks/bench_backtest.py --dataset /path/to/ml-100k-canonical --repeats 1
    python benchmarks/bench_backtest.py --dataset movielens-100k --cuts 0.8,0.9
    python benchmarks/bench_backtest.py --dataset <folder> --parallel both   # towers.parallel

``--parallel both`` runs the command with training in a second process off and on
(``RECSYS_TRAIN_IN_PARALLEL``), alternating, and says whether every number of their
``backtest.json`` (all but the seconds) is the same.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _row(name: str, values: list[float]) -> str:
    spread = f"{min(values):.1f}-{max(values):.1f}" if len(values) > 1 else ""
    return f"{name:>16} {statistics.median(values):>9.1f} {spread:>13}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--cuts", help="cut quantiles (default: the command's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, help="parent of the output folders (default: tmp)")
    parser.add_argument("--parallel", choices=("on", "off", "both"), default="on",
                        help="RECSYS_TRAIN_IN_PARALLEL for the command; both: each in turn, "
                             "compared")  # fmt: skip
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-backtest-"))
    recsys = Path(sys.executable).with_name("recsys")
    # Each mode's runs alternate within a repeat, so that both see the same machine load.
    modes = {"both": ("off", "on"), "on": ("on",), "off": ("off",)}[args.parallel]
    walls: dict[str, list[float]] = {m: [] for m in modes}
    cuts: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    results: dict[str, str] = {}
    for r in range(args.repeats):
        for mode in modes:
            out = work / f"run{r}-{mode}"
            command = [str(recsys), "backtest", "--dataset", args.dataset, "--out", str(out),
                       "--data-dir", str(work / "data"),
                       *(["--cuts", args.cuts] if args.cuts else [])]  # fmt: skip
            env = {**os.environ, "RECSYS_TRAIN_IN_PARALLEL": "true" if mode == "on" else "false"}
            start = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
            walls[mode].append(time.perf_counter() - start)
            summary = json.loads((out / "backtest.json").read_text())
            for w in summary["windows"]:
                for step, seconds in w.pop("seconds").items():
                    cuts[mode].setdefault(f"cut {w['index']} {step}", []).append(seconds)
            summary.pop("wall_seconds", None)
            results[f"{r}-{mode}"] = json.dumps(summary, sort_keys=True, default=str)
    for mode in modes:
        print(f"{'':>16} {'median s':>9} {'range s':>13}   ({args.repeats} repeat(s), "
              f"{args.dataset}, training in parallel: {mode})")  # fmt: skip
        for name, values in cuts[mode].items():
            print(_row(name, values))
        print(_row("total (wall)", walls[mode]))
    if len(modes) == 2:
        ratio = [off / on for off, on in zip(walls["off"], walls["on"], strict=True)]
        same = len(set(results.values())) == 1
        print(f"one process / in parallel, per repeat: {', '.join(f'{x:.2f}x' for x in ratio)}; "
              f"every number of backtest.json (but its seconds) the same: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
