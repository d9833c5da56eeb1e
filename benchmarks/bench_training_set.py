"""Benchmark: building the point-in-time training set through Feast vs a raw DuckDB ASOF JOIN.

For each size, a synthetic dataset is generated, its feature tables built and applied to
Feast once (cached under --work). Then each method runs in its own fresh process, so peak
RSS is that method's alone: the Feast API (``get_historical_features(...).to_arrow()`` with
the interactions as entity rows, the offline store set in feature_store.yaml or --offline-store)
and the same join written directly as DuckDB ``ASOF JOIN``s (``recsys.asof``). Both produce
an Arrow table of the same rows and columns; the script prints time, peak RSS and the ratio.

    python benchmarks/bench_training_set.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(work: Path, size: int) -> Path:
    """Dataset, features and Feast registry for one size (reused when already there).
    Size 0 means MovieLens-100K, the real dataset."""
    from recsys import store as feast_store
    from recsys.features import build_features
    from recsys.ingest import ingest
    from recsys.settings import Settings

    if size == 0:
        data = work / "movielens-100k"
        settings = Settings(data_dir=data, dataset="movielens-100k")
    else:
        data = work / f"synthetic-{size}"
        settings = Settings(data_dir=data, dataset="synthetic", synthetic_interactions=size)
    if not (data / "features" / "manifest.json").exists():
        ingest(settings)
        build_features(settings.paths.dataset, settings.paths.features, settings.paths.data_dir)
    feast_store.apply(settings.paths)
    return data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(method: str, data: Path, offline_store: str | None) -> dict:
    """One measurement in this (fresh) process; prints its JSON result."""
    from recsys import store as feast_store
    from recsys.asof import asof_join_sql, view_specs
    from recsys.settings import Paths
    from recsys.sql import connect, parquet
    from recsys.training_set import FEATURE_SERVICE, entity_rows, historical_features

    paths = Paths(data)
    config = {"type": offline_store} if offline_store else None
    store = feast_store.feature_store(paths, config)
    interactions = parquet(paths.dataset, "interactions")
    before = peak_rss_mb()
    if method == "feast":
        rows = entity_rows(paths.dataset, as_of=_after_last(interactions))
        before = peak_rss_mb()
        start = time.perf_counter()
        table = historical_features(store, rows)
    else:
        projections = store.get_feature_service(FEATURE_SERVICE).feature_view_projections
        specs = view_specs([store.get_feature_view(p.name) for p in projections])
        entity = f"SELECT user_id, item_id, rating, event_timestamp FROM {interactions}"
        start = time.perf_counter()
        table = connect().sql(asof_join_sql(entity, specs)).to_arrow_table()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "seconds": round(seconds, 3),
        "rows": table.num_rows,
        "columns": table.num_columns,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_mb": round(before, 1),
    }


def _after_last(interactions: str):  # noqa: ANN202 - a datetime
    from recsys.features import ONE_US
    from recsys.sql import connect

    return (
        connect().execute(f"SELECT max(event_timestamp) FROM {interactions}").fetchone()[0] + ONE_US
    )


def measure(
    method: str, data: Path, offline_store: str | None, timeout: float, max_rss_gb: float
) -> dict:
    """Run one method in a child process, killing it past ``max_rss_gb`` or ``timeout``."""
    import psutil

    cmd = [sys.executable, __file__, "--run", method, "--data", str(data)]
    if offline_store:
        cmd += ["--offline-store", offline_store]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, start, peak = psutil.Process(child.pid), time.monotonic(), 0.0
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss / 2**30)
        except psutil.NoSuchProcess:
            break
        elapsed = time.monotonic() - start
        if peak > max_rss_gb or elapsed > timeout:
            child.kill()
            child.wait()
            why = (
                f"RSS passed {max_rss_gb:.0f} GB"
                if peak > max_rss_gb
                else f"ran past {timeout:.0f} s"
            )
            return {"method": method, "error": f"killed after {elapsed:.0f} s: {why}"}
        time.sleep(0.1)
    out, err = child.communicate()
    if child.returncode != 0:
        return {"method": method, "error": (err.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[0, 100_000, 1_000_000],
        help="synthetic interactions; 0 = MovieLens-100K",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "data")
    parser.add_argument("--offline-store", help="dotted path of a Feast offline store class")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--max-rss-gb", type=float, default=16, help="kill a method past this")
    parser.add_argument("--run", choices=["feast", "asof"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run, args.data, args.offline_store)))
        return
    results = []
    header = f"{'dataset':>14} {'method':>6} {'seconds':>8} {'peak RSS MB':>11} {'rows':>10}"
    print(header)
    for size in args.sizes:
        data = prepare(args.work, size)
        name = "movielens-100k" if size == 0 else f"synth-{size:,}"
        pair = {
            m: measure(m, data, args.offline_store, args.timeout, args.max_rss_gb)
            for m in ("asof", "feast")
        }
        for method, r in pair.items():
            if "error" in r:
                print(f"{name:>14} {method:>6} {r['error']}")
            else:
                print(
                    f"{name:>14} {method:>6} {r['seconds']:>8.2f} {r['peak_rss_mb']:>11.0f} {r['rows']:>10}"
                )
        if all("error" not in r for r in pair.values()):
            ratio = pair["feast"]["seconds"] / max(pair["asof"]["seconds"], 1e-9)
            print(f"{name:>14} feast / asof time ratio: {ratio:.1f}x")
        results.append({"dataset": name, **pair})
    out = ROOT / "benchmarks" / "results" / "training_set.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
