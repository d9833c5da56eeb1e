"""Benchmark of the one-row user encoding a request pays (``RowEncoder.arrays``).

    python benchmarks/bench_row_encoding.py --calls 10000 --repeat 3

An encoder with MovieLens-100K-sized vocabularies (943 users, 1,682 items, 19 genres,
history 20) encodes one known user with a full history, ``--calls`` times per repetition;
prints the p50 and p90 of each repetition in µs and the spread of the p50s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recsys.features.encoding import FeatureEncoder
from recsys.features.row_encoding import RowEncoder


def encoder(history: int = 20) -> FeatureEncoder:
    stats = {name: (1.0, 2.0) for name in ("user_interaction_count", "user_mean_rating",
                                           "history_rating", "history_log_hours")}  # fmt: skip
    return FeatureEncoder(
        user_ids=list(range(1, 944)),
        item_ids=list(range(1, 1683)),
        cats={
            "age_bucket": ["18-24", "25-34", "35-44"],
            "gender": ["F", "M"],
            "occupation": [f"job{k}" for k in range(21)],
            "zip_prefix": [f"{k:03d}" for k in range(600)],
        },  # fmt: skip
        genres=[f"genre{k}" for k in range(19)],
        stats=stats,
        history=history,
    )


def row(now: float, history: int = 20) -> dict:
    return {
        "age_bucket": "25-34", "gender": "F", "occupation": "job3", "zip_prefix": "941",
        "user_interaction_count": 57, "user_mean_rating": 3.6,
        "user_genre_affinity": [1 / 19] * 19,
        "recent_item_ids": list(range(10, 10 + history)),
        "recent_item_ratings": [float(1 + k % 5) for k in range(history)],
        "recent_item_timestamps": [int(now) - 3600 * k for k in range(history)],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows, now = RowEncoder(encoder()), time.time()
    values = row(now)
    for _ in range(1000):  # warm-up
        rows.arrays(7, values, now)
    p50s = []
    for r in range(args.repeat):
        took = np.empty(args.calls)
        for i in range(args.calls):
            start = time.perf_counter()
            rows.arrays(7, values, now)
            took[i] = time.perf_counter() - start
        p50, p90 = np.percentile(took, [50, 90]) * 1e6
        p50s.append(p50)
        print(f"repetition {r + 1}: p50 {p50:.1f} µs, p90 {p90:.1f} µs ({args.calls} calls)")
    print(f"p50 over repetitions: median {np.median(p50s):.1f} µs, "
          f"min {min(p50s):.1f}, max {max(p50s):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
