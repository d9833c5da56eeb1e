"""Benchmark of the synthetic generator: wall time, rows/s and peak RSS of one run.

    python benchmarks/bench_synthetic.py --interactions 50000000 --out /tmp/synthetic-bench

Peak RSS is the process's high-water mark (``resource.getrusage``, kilobytes on Linux), so
run one generation per process. The output folder is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from recsys.datasets.synthetic import generate_synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = args.out or Path(tempfile.mkdtemp(prefix="synthetic-bench-"))
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    summary = generate_synthetic(
        out, args.interactions, seed=args.seed, progress=not args.no_progress
    )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB -> bytes on Linux
    size = sum(f.stat().st_size for f in out.iterdir())
    rows = pq.ParquetFile(out / "interactions.parquet").metadata.num_rows
    assert rows == args.interactions, (rows, args.interactions)

    print(f"interactions      {summary.n_interactions:,}")
    print(f"users / items     {summary.n_users:,} / {summary.n_items:,}")
    print(f"wall time         {wall:.1f} s")
    print(f"rows/s            {summary.n_interactions / wall:,.0f}")
    print(
        f"peak RSS          {peak / 2**20:,.0f} MiB (baseline before run {rss_before / 2**20:,.0f} MiB)"
    )
    print(f"folder size       {size / 2**20:,.0f} MiB  ({out})")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
