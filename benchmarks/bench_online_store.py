"""Benchmark of the online store: Feast's SQLite store (local profile) against its Redis store
(cluster profile), side by side in one run.

    python benchmarks/bench_online_store.py --data /tmp/ml/data --repeat 3

The data folder (one with a promoted version, e.g. from ``recsys pipeline``) is copied twice
to a temporary folder and never written to: one copy keeps its SQLite online store, the
other is applied to Feast's SQL registry (a database created for the run on
``RECSYS_POSTGRES_URL``, dropped at the end) and materialized, candidates included, into a
private ``redis-server`` on a free loopback port (the shared one is untouched).

1. Lookup only, in process: one user's ``user_tower_serving_v1`` features (what a request
   reads), ``--lookups`` users drawn at random, each store through the server's direct
   reader (``serving.online``) and through Feast's ``get_online_features``, the four
   interleaved, ``--repeat`` times. Feast's documentation gives ~1.3 ms per lookup for
   Redis on localhost.
2. ``GET /recommendations/{user}?k=20`` over HTTP at ``--rate`` requests/s, open loop
   (``bench_serving``'s load generator: latency from each request's scheduled time, in a
   process of its own), one server per store, both running, tests alternating between them,
   ``--repeat`` times each.

The two cores are shared by the server, the load generator and Redis: the load average and
CPU steal are printed beside each test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import _measured, free_port, start_server, stop_server, user_paths  # noqa: E402

SERVICE = "user_tower_serving_v1"


@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port, no persistence; its URL."""
    import redis

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A Postgres database for the run's Feast registry (SQLAlchemy URL), dropped after."""
    import psycopg

    scheme, rest = admin_url.split("://", 1)
    name = f"recsys_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{scheme.split('+')[0]}://{rest}", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` (what a server started meanwhile inherits)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_redis(data: Path, env: dict[str, str]) -> dict[str, float]:
    """Apply, materialize and push the candidates into the cluster profile's stores."""
    import pyarrow.parquet as pq

    from recsys import store
    from recsys.features.build import default_as_of
    from recsys.settings import Settings
    from towers import candidates

    with environment(env):
        folder: dict[str, Any] = {"data_dir": data}
        settings = Settings(**folder)
    t0 = time.perf_counter()
    feast = store.apply(settings.paths, store.feature_store_for(settings))
    t1 = time.perf_counter()
    store.materialize(settings.paths, end=default_as_of(settings.paths.dataset), store=feast)
    t2 = time.perf_counter()
    table = pq.read_table(settings.paths.candidates / "user_candidates.parquet")
    pushed = candidates.push_online(feast, table)
    t3 = time.perf_counter()
    print(f"  cluster stores loaded: apply {t1 - t0:.1f} s, materialize {t2 - t1:.1f} s, "
          f"{pushed} users' candidates {t3 - t2:.1f} s", file=sys.stderr)  # fmt: skip
    return {"apply": t1 - t0, "materialize": t2 - t1, "candidates": t3 - t2}


def lookups(stores: dict[str, Any], users: list[int], repeat: int) -> dict[str, list[np.ndarray]]:
    """{reader: [per-lookup ms of each repetition]}, the readers interleaved per user."""
    from serving.online import feast_reader, online_reader

    readers = {}
    for name, feast in stores.items():
        readers[f"{name} direct"] = online_reader(feast, SERVICE)
        readers[f"{name} feast"] = feast_reader(feast, SERVICE)
    for reader in readers.values():  # warm-up: connections, registry caches
        for user in users[:50]:
            reader(user)
    clock = time.perf_counter_ns
    times: dict[str, list[np.ndarray]] = {name: [] for name in readers}
    for _ in range(repeat):
        rep = {name: np.empty(len(users)) for name in readers}
        for i, user in enumerate(users):
            for name, reader in readers.items():
                t0 = clock()
                reader(user)
                rep[name][i] = (clock() - t0) / 1e6
        for name in readers:
            times[name].append(rep[name])
    return times


def spread(values: list[float]) -> str:
    """Median of the repetitions and their range."""
    return f"{np.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    from recsys.settings import Settings
    from recsys.store import feature_store_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data folder (copied)")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="open-loop duration")
    parser.add_argument("--repeat", type=int, default=3, help="tests per store")
    parser.add_argument("--lookups", type=int, default=2000, help="users per lookup test")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-online-store-"))
    local, cluster = work / "sqlite" / "data", work / "redis" / "data"
    for copy in (local, cluster):
        shutil.copytree(args.data, copy, symlinks=True)
    local_env = {"RECSYS_PROFILE": "local"}
    with private_redis(work / "redis-server") as redis_url, \
            fresh_database(Settings().postgres_url) as postgres_url:  # fmt: skip
        cluster_env = {"RECSYS_PROFILE": "cluster", "RECSYS_REDIS_URL": redis_url,
                       "RECSYS_POSTGRES_URL": postgres_url}  # fmt: skip
        load_redis(cluster, cluster_env)
        import pandas as pd

        ids = pd.read_parquet(local / "dataset" / "users.parquet").user_id.to_numpy()
        users = np.random.default_rng(args.seed).choice(ids, args.lookups).tolist()
        stores = {}
        for name, data, env in (("sqlite", local, local_env), ("redis", cluster, cluster_env)):
            with environment(env):
                folder: dict[str, Any] = {"data_dir": data}
                stores[name] = feature_store_for(Settings(**folder))
        lookup = lookups(stores, users, args.repeat)

        paths = user_paths(local, 5000, args.seed)
        servers = {}
        rows: list[dict[str, Any]] = []
        try:
            for name, data, env in (("sqlite", local, local_env), ("redis", cluster, cluster_env)):
                with environment(env):
                    servers[name] = start_server(data, "auto", work / f"server-{name}.log")
            for _ in range(args.repeat):
                for name, (_, port) in servers.items():
                    cfg = {"host": "127.0.0.1", "port": port, "paths": paths, "kind": "open",
                           "timeout": args.timeout, "rate": args.rate, "seconds": args.seconds,
                           "max_in_flight": args.max_in_flight}  # fmt: skip
                    print(f"  open loop against {name}", file=sys.stderr, flush=True)
                    rows.append({"store": name, **_measured(cfg)})
        finally:
            for server, _ in servers.values():
                stop_server(server)

    print(f"\nonline lookup of one user's {SERVICE} features, in process, {args.lookups} "
          f"users x {args.repeat} repetitions; ms, median of the repetitions (min-max)")  # fmt: skip
    print(f"{'reader':<14} {'p50 ms':>22} {'p99 ms':>22} {'mean ms':>22}")
    for name, reps in lookup.items():
        p50 = [float(np.percentile(r, 50)) for r in reps]
        p99 = [float(np.percentile(r, 99)) for r in reps]
        mean = [float(r.mean()) for r in reps]
        print(f"{name:<14} {spread(p50):>22} {spread(p99):>22} {spread(mean):>22}")
    print("(Feast's documentation: ~1.3 ms per Redis lookup on localhost)")

    print(f"\nGET /recommendations/{{user}}?k=20, open loop {args.rate:g} requests/s for "
          f"{args.seconds:g} s, latency from the scheduled send time, one uvicorn worker per "
          f"store; {os.cpu_count()} CPUs")  # fmt: skip
    header = (f"{'store':<7} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'p99 ms':>8} {'max ms':>8} {'load':>5} {'steal%':>6}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['store']:<7} {r['requests']:>8} {r['errors']:>6} {r['p50']:>7.2f} "
              f"{r['p95']:>7.2f} {r['p99']:>8.2f} {r['max']:>8.1f} {r['load']:>5.1f} "
              f"{r['steal']:>6.1f}" + (f"  {r['error_kinds']}" if r["error_kinds"] else ""))  # fmt: skip
    for name in ("sqlite", "redis"):
        mine = [r for r in rows if r["store"] == name]
        print(f"{name}: p50 {spread([r['p50'] for r in mine])} ms, "
              f"p99 {spread([r['p99'] for r in mine])} ms over {len(mine)} runs")  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
