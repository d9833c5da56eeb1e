"""Benchmark of EASE's dense fit: seconds per λ at a given catalogue size.

Each λ that ``towers.ease.ease_lambda_search`` tries costs one Cholesky inverse of the
N x N Gram matrix (``towers.ease.ease_weights``), about N³ flops; this times one on a random
sparse users x items matrix of the given density, which sets ``EASE_MAX_ITEMS``.

    OPENBLAS_NUM_THREADS=2 python benchmarks/bench_ease.py --items 2000 4000 10000

BLAS threads: ``OPENBLAS_NUM_THREADS`` (the project sets 1 unless it is set; see ``recsys``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

# First: recsys's BLAS thread setting must precede numpy's loading.
import recsys  # noqa: E402, F401

# isort: split
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from towers.ease import ease_weights, gram  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 4000, 10000])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--per-user", type=int, default=50, help="interactions per user")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in args.items:
        rows = np.repeat(np.arange(args.users), args.per_user)
        cols = rng.integers(0, n, len(rows))
        x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(args.users, n))
        start = time.perf_counter()
        g = gram(x)
        gram_s = time.perf_counter() - start
        start = time.perf_counter()
        ease_weights(g, 500.0)
        fit_s = time.perf_counter() - start
        print(json.dumps({"items": n, "gram_seconds": round(gram_s, 2),
                          "seconds_per_lambda": round(fit_s, 2)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
