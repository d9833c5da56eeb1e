"""Benchmark of the item-embedding store: build time, top-k latency and ANN recall.

    python benchmarks/bench_vectors.py --sizes 1682 100000 --queries 2000

For each catalogue size N: random L2-normalised float32 vectors (d=64 by default), written
once without an index ("flat") and once with the ANN index; then ``--queries`` random
normalised user vectors, each searched for the top ``--k`` items with ``--exclude`` random
already-seen ids (one compute thread, as in a server process), in four modes: LanceDB flat, LanceDB ANN, the in-memory matrix and the
in-memory HNSW graph (its build time includes writing the table). Recall
is recall@k against NumPy's exact top-k with the same exclusions. Latency is per query,
single-threaded, wall clock. Random vectors have no cluster structure: the hardest case for
an ANN index (recall on real embeddings is higher).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB warns on every new table otherwise
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from recsys.index.hnsw import HNSW_MIN_ROWS  # noqa: E402
from recsys.index.search import ItemIndex  # noqa: E402
from recsys.index.table import ANN_MIN_ROWS, write_item_table  # noqa: E402
from serving.threads import limit_threads  # noqa: E402


def normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_top(
    ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray, seen: np.ndarray, k: int
) -> list[set[int]]:
    """Exact top-k ids per query (excluding its seen ids), in chunks to bound memory."""
    pos_of = {int(i): p for p, i in enumerate(ids)}
    out: list[set[int]] = []
    for start in range(0, len(queries), 100):
        scores = queries[start : start + 100] @ vecs.T
        for row, q in enumerate(range(start, min(start + 100, len(queries)))):
            s = scores[row]
            s[[pos_of[int(i)] for i in seen[q]]] = -np.inf
            top = np.argpartition(-s, k - 1)[:k]
            out.append({int(i) for i in ids[top]})
    return out


def run_queries(
    index: ItemIndex, queries: np.ndarray, seen: np.ndarray, k: int, truth: list[set[int]]
) -> tuple[np.ndarray, float]:
    index.search(queries[0], k, exclude=seen[0])  # warm-up (lazy file opens, caches)
    latencies = np.empty(len(queries))
    hits = 0
    for q in range(len(queries)):
        t0 = time.perf_counter()
        got, _ = index.search(queries[q], k, exclude=seen[q])
        latencies[q] = time.perf_counter() - t0
        assert len(got) == k and not np.isin(got, seen[q]).any()
        hits += len(truth[q].intersection(got.tolist()))
    return latencies * 1e3, hits / (k * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1682, 100_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--exclude", type=int, default=20, help="seen ids excluded per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", type=Path, default=None, help="LanceDB folder (default: temp)")
    args = parser.parse_args()

    limit_threads(1)  # as a server process: BLAS, faiss and torch on one thread
    rng = np.random.default_rng(args.seed)
    db_dir = args.db or Path(tempfile.mkdtemp(prefix="bench-vectors-"))
    rows = []
    for n in args.sizes:
        ids = rng.permutation(n).astype(np.int64) + 1
        vecs = normalised(rng, n, args.dim)
        queries = normalised(rng, args.queries, args.dim)
        seen = np.stack([rng.choice(ids, args.exclude, replace=False) for _ in queries])
        truth = exact_top(ids, vecs, queries, seen, args.k)

        none = n + 1  # no ANN index, no HNSW graph
        flat = write_item_table(db_dir, f"bench-{n}-flat", ids, vecs, ann_min_rows=none,
                                hnsw_min_rows=none)  # fmt: skip
        ann = write_item_table(db_dir, f"bench-{n}-ann", ids, vecs, ann_min_rows=0,
                               hnsw_min_rows=none)  # fmt: skip
        graph = write_item_table(db_dir, f"bench-{n}-hnsw", ids, vecs, ann_min_rows=none,
                                 hnsw_min_rows=0)  # fmt: skip
        # What serving would open: the table write_item_table makes with the default thresholds.
        production = f"bench-{n}-ann" if n >= ANN_MIN_ROWS else f"bench-{n}-flat"
        auto = ItemIndex.open(db_dir, production, hnsw_min_rows=n + 1).mode
        if auto == "matrix" and n >= HNSW_MIN_ROWS:
            auto = "hnsw"
        cases = [
            ("lance flat", flat.build_seconds, f"bench-{n}-flat", "lance"),
            (f"lance {ann.index_type}", ann.build_seconds, f"bench-{n}-ann", "lance"),
            ("matrix", flat.build_seconds, f"bench-{n}-flat", "matrix"),
            ("hnsw (in memory)", graph.build_seconds, f"bench-{n}-hnsw", "hnsw"),
        ]
        for label, build, version, mode in cases:
            t0 = time.perf_counter()
            index = ItemIndex.open(db_dir, version, mode=mode)  # type: ignore[arg-type]
            open_s = time.perf_counter() - t0
            lat, recall = run_queries(index, queries, seen, args.k, truth)
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            rows.append((n, label, build, open_s, p50, p95, p99, recall, auto == mode))
            print(f"  done: N={n} {label}", file=sys.stderr, flush=True)

    load = os.getloadavg()
    print(
        f"\nd={args.dim}, top-{args.k}, {args.exclude} excluded ids, {args.queries} queries, "
        f"single thread; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    header = (
        f"{'N':>8} {'mode':<18} {'build s':>8} {'open s':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'recall@' + str(args.k):>9} {'auto':>5}"
    )
    print(header)
    print("-" * len(header))
    for n, label, build, open_s, p50, p95, p99, recall, chosen in rows:
        print(
            f"{n:>8} {label:<18} {build:>8.2f} {open_s:>7.2f} {p50:>7.2f} {p95:>7.2f} "
            f"{p99:>7.2f} {recall:>9.3f} {'*' if chosen else '':>5}"
        )
    print("build s of matrix = the flat table it loads; auto = the mode 'auto' picks")


if __name__ == "__main__":
    main()
