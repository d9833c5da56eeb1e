"""Benchmark: wall time of ``recsys backtest``, per cut (and its steps) and in total.

Runs the command as a user would, in a fresh output folder per repeat, and reads each cut's
seconds from its ``backtest.json``; prints, per cut and step, the median and the range over
the repeats, then the command's total wall time. The MovieLens download cache
(``<repo>/data/raw``) is not needed when ``--dataset`` is a canonical folder.

    python benchmarks/bench_backtest.py --dataset /path/to/ml-100k-canonical --repeats 1
    python benchmarks/bench_backtest.py --dataset movielens-100k --cuts 0.8,0.9
"""

import argparse
import json
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
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-backtest-"))
    recsys = Path(sys.executable).with_name("recsys")
    walls: list[float] = []
    cuts: dict[str, list[float]] = {}
    for r in range(args.repeats):
        out = work / f"run{r}"
        command = [str(recsys), "backtest", "--dataset", args.dataset, "--out", str(out),
                   "--data-dir", str(work / "data"), *(["--cuts", args.cuts] if args.cuts else [])]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        for w in json.loads((out / "backtest.json").read_text())["windows"]:
            for step, seconds in w["seconds"].items():
                cuts.setdefault(f"cut {w['index']} {step}", []).append(seconds)
    print(f"{'':>16} {'median s':>9} {'range s':>13}   ({args.repeats} repeat(s), {args.dataset})")
    for name, values in cuts.items():
        print(_row(name, values))
    print(_row("total (wall)", walls))


if __name__ == "__main__":
    main()
