"""Benchmark: feature tables and the point-in-time training set, through Feast and raw DuckDB.

For each dataset (MovieLens-100K, or synthetic of a given size) the canonical dataset is
ingested once (cached under --work). Then each step runs in its own fresh process, so its
peak RSS is its own (a watchdog kills it past --max-rss-gb):

- ``features``: the DuckDB SQL that builds the four feature tables, written to parquet;
- ``asof``: the training set as raw DuckDB ASOF JOINs (``recsys.asof``), streamed to parquet;
- ``feast``: the same rows through the Feast API with the project's offline store
  (``get_historical_features(...).to_parquet``, entity rows given as SQL);
- ``check``: the ``feast`` output compared, row for row (``EXCEPT ALL`` both ways), with an
  independent DuckDB join that uses no ASOF JOIN (``tests/pit_reference.window_join_sql``);
- ``stock``: the Feast API with Feast's stock DuckDB store (``to_arrow``, entity rows as a
  pandas DataFrame), skipped above --stock-max rows.

    python benchmarks/bench_training_set.py --sizes 0 100000 1000000 10000000
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
METHODS = ("features", "asof", "feast", "check", "stock")


def prepare(work: Path, size: int) -> Path:
    """The ingested dataset for one size; 0 means MovieLens-100K."""
    from recsys.ingest import ingest
    from recsys.settings import Settings

    name = "movielens-100k" if size == 0 else f"synthetic-{size}"
    data = work / name
    if not (data / "dataset" / "manifest.json").exists():
        dataset = "movielens-100k" if size == 0 else "synthetic"
        ingest(Settings(data_dir=data, dataset=dataset, synthetic_interactions=max(size, 1000)))
    return data


def _feast_apply(data: Path) -> None:
    from recsys import store as feast_store
    from recsys.settings import Paths

    feast_store.apply(Paths(data))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(method: str, data: Path, memory_limit: str | None) -> dict:
    """One measurement in this (fresh) process."""
    from recsys import store as feast_store
    from recsys.asof import asof_join_sql, prepare, view_specs, without_needless_tiebreaks
    from recsys.features.build import build_features, default_as_of
    from recsys.settings import Paths
    from recsys.sql import connect, string
    from recsys.training_set import FEATURE_SERVICE, entity_rows, training_job

    paths = Paths(data)
    out = data / "bench-out" / f"{method}.parquet"
    out.parent.mkdir(exist_ok=True)
    if method == "features":
        start = time.perf_counter()
        build_features(paths.dataset, paths.features, paths.data_dir, memory_limit=memory_limit)
        return _result(method, start, rows=None)
    as_of = default_as_of(paths.dataset)
    if method == "asof":
        store = feast_store.feature_store(paths)
        projections = store.get_feature_service(FEATURE_SERVICE).feature_view_projections
        specs = view_specs([store.get_feature_view(p.name) for p in projections])
        start = time.perf_counter()
        con = connect(memory_limit)
        con.execute("SET preserve_insertion_order = false")
        specs = without_needless_tiebreaks(prepare(con), specs)
        sql = asof_join_sql(entity_rows(paths.dataset, as_of, as_sql=True), specs)
        con.execute(f"COPY ({sql}) TO {string(str(out))} (FORMAT parquet, COMPRESSION zstd)")
    elif method == "check":
        from tests.pit_reference import window_join_sql

        store = feast_store.feature_store(paths)
        projections = store.get_feature_service(FEATURE_SERVICE).feature_view_projections
        views = [store.get_feature_view(p.name) for p in projections]
        ours = f"read_parquet({string(str(out.with_name('feast.parquet')))})"
        start = time.perf_counter()
        con = connect(memory_limit)
        con.execute("SET preserve_insertion_order = false")
        reference = window_join_sql(entity_rows(paths.dataset, as_of, as_sql=True), views)
        con.execute(f"CREATE TEMP TABLE ref AS {reference}")
        columns = ", ".join(f'"{c}"' for c in con.execute(f"SELECT * FROM {ours} LIMIT 0").df())
        diff = [
            con.execute(
                f"SELECT count(*) FROM (SELECT {columns} FROM {a} EXCEPT ALL "
                f"SELECT {columns} FROM {b})"
            ).fetchone()[0]  # fmt: skip
            for a, b in ((ours, "ref"), ("ref", ours))
        ]
        result = _result(method, start, rows=con.execute("SELECT count(*) FROM ref").fetchone()[0])
        return {**result, "rows_only_in_feast": diff[0], "rows_only_in_reference": diff[1]}
    elif method == "feast":
        offline = {"type": "recsys.offline_store.DuckDBAsofOfflineStore"}
        store = feast_store.feature_store(paths, {**offline, "memory_limit": memory_limit})
        start = time.perf_counter()
        training_job(store, entity_rows(paths.dataset, as_of, as_sql=True)).to_parquet(out)
    else:
        store = feast_store.feature_store(paths, {"type": "duckdb"})
        frame = entity_rows(paths.dataset, as_of)
        start = time.perf_counter()
        table = store.get_historical_features(
            entity_df=frame, features=store.get_feature_service(FEATURE_SERVICE)
        ).to_arrow()
        return _result(method, start, rows=table.num_rows)
    rows = connect().execute(f"SELECT count(*) FROM read_parquet({string(str(out))})").fetchone()
    return _result(method, start, rows=rows[0] if rows else None)


def _result(method: str, start: float, rows: int | None) -> dict:
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": round(seconds, 2), "rows": rows,
            "peak_rss_mb": round(peak_rss_mb())}  # fmt: skip


def measure(
    method: str, data: Path, timeout: float, max_rss_gb: float, memory_limit: str | None
) -> dict:
    """Run one method in a child process, killing it past ``max_rss_gb`` or ``timeout``."""
    import psutil

    cmd = [sys.executable, __file__, "--run", method, "--data", str(data)]
    if memory_limit:
        cmd += ["--memory-limit", memory_limit]
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
                f"RSS passed {max_rss_gb:g} GB" if peak > max_rss_gb else f"ran past {timeout:g} s"
            )
            return {"method": method, "error": f"killed after {elapsed:.0f} s: {why}"}
        time.sleep(0.05)
    out, err = child.communicate()
    if child.returncode != 0:
        lines = [line for line in err.strip().splitlines() if "Error" in line or "error" in line]
        return {"method": method, "error": (lines or err.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000],
                        help="synthetic interactions; 0 = MovieLens-100K")  # fmt: skip
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "data")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--stock-max", type=int, default=1_000_000,
                        help="skip the stock store above this many interactions")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--max-rss-gb", type=float, default=16, help="kill a method past this")
    parser.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 3GB (all methods)")
    parser.add_argument("--run", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run, args.data, args.memory_limit)))
        return
    print(f"{'dataset':>16} {'method':>9} {'seconds':>8} {'peak RSS MB':>11} {'rows':>11}")
    results = []
    for size in args.sizes:
        data = prepare(args.work, size)
        name = "movielens-100k" if size == 0 else f"synth-{size:,}"
        found = {}
        for method in args.methods:
            if method == "stock" and size > args.stock_max:
                continue
            r = found[method] = measure(
                method, data, args.timeout, args.max_rss_gb, args.memory_limit
            )
            if method == "features" and "error" not in r:
                _feast_apply(data)
            if "error" in r:
                print(f"{name:>16} {method:>9} {r['error']}", flush=True)
            elif method == "check":
                same = r["rows_only_in_feast"] == r["rows_only_in_reference"] == 0
                print(f"{name:>16} {method:>9} {r['seconds']:>8.2f} {r['peak_rss_mb']:>11,} "
                      f"{r['rows']:>11,}  {'identical' if same else f'DIFFERENT: {r}'}", flush=True)  # fmt: skip
            else:
                rows = "" if r["rows"] is None else f"{r['rows']:,}"
                print(f"{name:>16} {method:>9} {r['seconds']:>8.2f} {r['peak_rss_mb']:>11,} "
                      f"{rows:>11}", flush=True)  # fmt: skip
        for method in ("feast", "stock"):
            if "seconds" in found.get(method, {}) and "seconds" in found.get("asof", {}):
                ratio = found[method]["seconds"] / max(found["asof"]["seconds"], 1e-9)
                print(f"{name:>16} {method} / raw asof time: {ratio:.2f}x", flush=True)
        for method in found:  # only this run's outputs: another run may share the folder
            (data / "bench-out" / f"{method}.parquet").unlink(missing_ok=True)
        results.append({"dataset": name, **found})
    out = ROOT / "benchmarks" / "results" / "training_set.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
