"""Benchmark of the serving API: latency and throughput of GET /recommendations over HTTP.

    python benchmarks/bench_serving.py --data /tmp/pb/data
    python benchmarks/bench_serving.py --data /tmp/pb/data --catalogue 0      # ML-100K only

The data folder (one with a promoted version, e.g. from ``recsys pipeline``) is copied to a
temporary folder first and never written to. Each phase starts ``python -m serving``
(``--workers`` uvicorn workers, default 1) as a subprocess and drives it from a separate load-generator process
(asyncio, keep-alive connections, loopback only) in two ways, in this order:

* closed loop: ``--concurrency`` connections each sending its next request as soon as the
  previous one is answered, for ``--closed-seconds``: the throughput ceiling;
* open loop: requests sent on a fixed schedule (``--rate`` per second for ``--seconds``)
  whatever the server does, latency measured from each request's *scheduled* time (so a
  stalled server is not hidden by a client that waits: no coordinated omission); at most
  ``--max-in-flight`` requests outstanding, and a request not answered within
  ``--timeout`` seconds counts as an error (a rate the server cannot sustain shows up as
  errors and latencies near the timeout); ``--repeat`` times.

The load generator shares the machine's cores with the server (and with anything else
running): the load average during each test is printed beside it, and on a virtual machine
the steal time (the share of CPU time the hypervisor gave to other machines meanwhile),
which is what decides this machine's tail latencies from one run to the next.

Before the phases, the user tower alone in-process: the PyTorch module, TorchScript, and
the version's ONNX graph in ONNX Runtime (what serving runs), on served rows.

Users are drawn at random (seeded) from the dataset's users; every request is
``GET /recommendations/{user}?k=20``.

Phases:

1. the data folder as it is (MovieLens-100K: 1,682 items, in-memory matrix search);
2. ``--catalogue`` items (default 100,000): the version's checkpoint is copied under two
   fake versions whose LanceDB tables hold the real item vectors plus synthetic ones
   (random real vectors with noise, renormalised), one table with the IVF_HNSW_SQ index (and
   the in-memory HNSW graph ``write_item_table`` keeps beside it) and one without. Training
   a real 100K-item model would need a ~10M-interaction pipeline run (its features and
   training set alone take minutes here, then training); for latency only the catalogue
   size matters, since the user side (Feast, user tower) is unchanged. First a search-only
   comparison in-process (the same query vectors and exclusions as serving: every user's
   seen items), then the server end to end with the HNSW graph (what ``auto`` picks at this
   size), the matrix, LanceDB ANN and LanceDB flat search.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout


# --- the load generator (runs in its own process) ------------------------------------------
class Pool:
    """Keep-alive HTTP/1.1 connections to one server, at most ``size`` open."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)

    async def get(self, path: str) -> int:
        async with self.slots:
            if self.idle:
                try:
                    return await self._request(self.idle.pop(), path)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # The server closed this idle keep-alive connection (uvicorn does after
                    # 5 s): retried once on a new one, as HTTP clients do for a GET.
                    pass
            return await self._request(await asyncio.open_connection(self.host, self.port), path)

    async def _request(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str
    ) -> int:
        reader, writer = conn
        ok = False
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            ok = True
            return status
        finally:
            if ok:
                self.idle.append(conn)
            else:  # failed or cancelled mid-request: the connection is unusable
                writer.close()


async def _open_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    # time.perf_counter, not loop.time(): uvloop's clock has a 1 ms resolution.
    clock = time.perf_counter
    pool = Pool(cfg["host"], cfg["port"], cfg["max_in_flight"])
    paths, rate, timeout = cfg["paths"], cfg["rate"], cfg["timeout"]
    for path in paths[:100]:  # warm-up (connections, first-request costs), not measured
        await pool.get(path)
    n = int(rate * cfg["seconds"])
    latencies = np.full(n, np.nan)
    statuses = np.zeros(n, dtype=np.int64)

    async def one(i: int, at: float) -> None:
        try:
            statuses[i] = await asyncio.wait_for(pool.get(paths[i % len(paths)]), timeout)
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            statuses[i] = -1
        latencies[i] = clock() - at

    start = clock() + 0.05
    tasks = []
    for i in range(n):
        at = start + i / rate
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    return _summary(latencies, statuses, clock() - start, sent_for=n / rate)


async def _closed_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    clock = time.perf_counter
    pool = Pool(cfg["host"], cfg["port"], cfg["concurrency"])
    paths = cfg["paths"]
    latencies: list[float] = []
    statuses: list[int] = []
    deadline = clock() + cfg["seconds"]

    async def worker(offset: int) -> None:
        i = offset
        while clock() < deadline:
            t0 = clock()
            try:
                status = await asyncio.wait_for(pool.get(paths[i % len(paths)]), cfg["timeout"])
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
                status = -1
            latencies.append(clock() - t0)
            statuses.append(status)
            i += cfg["concurrency"]

    for path in paths[:100]:  # warm-up, not measured
        await pool.get(path)
    start = clock()
    await asyncio.gather(*(worker(k) for k in range(cfg["concurrency"])))
    return _summary(np.array(latencies), np.array(statuses), clock() - start)


def _summary(
    latencies: np.ndarray, statuses: np.ndarray, elapsed: float, sent_for: float | None = None
) -> dict[str, Any]:
    ms = latencies * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms.size else (np.nan,) * 3
    return {
        "requests": int(statuses.size),
        "ok": int((statuses == 200).sum()),
        "errors": int((statuses != 200).sum()),
        "p50": float(p50), "p95": float(p95), "p99": float(p99),
        "max": float(ms.max()) if ms.size else float("nan"),
        "throughput": float((statuses == 200).sum() / elapsed),
        "seconds": elapsed,
        "sent_for": sent_for,
        # non-200 statuses by count; -1: no answer (timeout or connection failure)
        "error_kinds": _counts(statuses[statuses != 200]),
    }  # fmt: skip


def _counts(values: np.ndarray) -> dict[int, int]:
    keys, counts = np.unique(values, return_counts=True)
    return {int(k): int(c) for k, c in zip(keys, counts, strict=True)}


def load_main(cfg: dict[str, Any]) -> None:
    """The load generator's process: run one test, print its summary as JSON."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    test = _open_loop if cfg["kind"] == "open" else _closed_loop
    print(json.dumps(asyncio.run(test(cfg))))


def generate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator in a separate process (it must not share the server's or
    this process's interpreter)."""
    out = subprocess.run(
        [sys.executable, __file__, "--_load"],
        input=json.dumps(cfg), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- the server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    data: Path, search_mode: str, log: Path, workers: int = 1
) -> tuple[subprocess.Popen[bytes], int]:
    import http.client

    port = free_port()
    env = {**os.environ, "RECSYS_SERVING_SEARCH_MODE": search_mode}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--data-dir", str(data), "--port", str(port),
             "--log-level", "warning", "--workers", str(workers)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 180
    ready = 0  # consecutive 200s: with several workers each answers some of them
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            body = json.loads(response.read())
            conn.close()
            ready = ready + 1 if response.status == 200 else 0
            if ready >= 10 * workers:
                print(f"  server ready: {body['items']} items, search {body['search']}",
                      file=sys.stderr)  # fmt: skip
                return server, port
        except OSError:
            pass
        time.sleep(0.3)
    server.kill()
    raise RuntimeError("server not ready after 180 s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _cpu_ticks() -> tuple[int, int]:
    """(all, steal) CPU ticks of the machine so far (Linux /proc/stat; zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(ticks), ticks[7] if len(ticks) > 7 else 0


def _measured(cfg: dict[str, Any]) -> dict[str, Any]:
    """One load-generator test, with the machine's load average and the share of CPU time
    the hypervisor gave to other machines (steal) while it ran."""
    load, (total, steal) = os.getloadavg()[0], _cpu_ticks()
    result = generate(cfg)
    total2, steal2 = _cpu_ticks()
    return {**result, "load": (load + os.getloadavg()[0]) / 2,
            "steal": 100 * (steal2 - steal) / max(total2 - total, 1)}  # fmt: skip


def run_phase(
    name: str, data: Path, search_mode: str, paths: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    print(f"phase {name} ({search_mode})", file=sys.stderr, flush=True)
    server, port = start_server(data, search_mode, data.parent / f"server-{name}.log",
                                args.workers)  # fmt: skip
    rows = []
    try:
        base = {"host": "127.0.0.1", "port": port, "paths": paths, "timeout": args.timeout}
        # Closed loop first: an open loop at a rate the server cannot sustain leaves a
        # backlog (up to --max-in-flight requests) that would delay the next test.
        result = _measured({**base, "kind": "closed", "concurrency": args.concurrency,
                            "seconds": args.closed_seconds})  # fmt: skip
        rows.append({"phase": name, "search": search_mode,
                     "test": f"closed c={args.concurrency}", **result})  # fmt: skip
        for _ in range(args.repeat):  # the machine's noise shows as run-to-run spread
            result = _measured({**base, "kind": "open", "rate": args.rate,
                                "seconds": args.seconds, "max_in_flight": args.max_in_flight})  # fmt: skip
            rows.append({"phase": name, "search": search_mode, "test": f"open {args.rate:g}/s",
                         **result})  # fmt: skip
    finally:
        stop_server(server)
    return rows


# --- the 100K-item catalogue -----------------------------------------------------------------
def fake_versions(data: Path, n: int, seed: int) -> tuple[str, str]:
    """Two fake versions of the current checkpoint whose item tables hold ``n`` items (the
    real ones plus synthetic ones): one with the ANN index, one flat. Returns their ids."""
    import pyarrow as pa

    from recsys.index.search import ItemIndex
    from recsys.index.table import write_item_table
    from recsys.registry import ModelRegistry

    registry = ModelRegistry(data / "models")
    current = registry.current()
    assert current is not None, f"{data} has no promoted version"
    real = ItemIndex.open(data / "lancedb", current, mode="matrix")
    rng = np.random.default_rng(seed)
    extra = n - real.rows
    if extra <= 0:
        raise ValueError(f"--catalogue must exceed the {real.rows} real items")
    source = rng.integers(0, real.rows, extra)
    vecs = real.vectors[source].copy()
    d = vecs.shape[1] - 1  # [v / T, bias]: noise on v, norm kept, bias kept
    norms = np.linalg.norm(vecs[:, :d], axis=1, keepdims=True)
    noisy = vecs[:, :d] + rng.standard_normal((extra, d)).astype(np.float32) * norms * 0.3
    vecs[:, :d] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True) * norms
    ids = np.concatenate([real.item_ids, real.item_ids.max() + 1 + np.arange(extra)])
    vectors = np.concatenate([real.vectors, vecs]).astype(np.float32)
    attrs = real.attributes(real.item_ids)
    titles = [a.get("title") for a in attrs] + [f"Synthetic item {i}" for i in ids[real.rows :]]
    genres = [a.get("genres") for a in attrs] + [attrs[s].get("genres") for s in source]
    years = [a.get("release_year") for a in attrs] + [attrs[s].get("release_year") for s in source]
    table = pa.table({"title": titles, "genres": genres, "release_year": years})
    versions = []
    for kind, min_rows in (("ann", 0), ("flat", n + 1)):
        version = f"29990101T000000000000-c{n}{kind}"[:64]
        shutil.copytree(registry.path(current), registry.versions_dir / version)
        info = write_item_table(data / "lancedb", version, ids, vectors, table,
                                ann_min_rows=min_rows, hnsw_min_rows=min_rows)  # fmt: skip
        print(f"  {version}: {info.rows} items, {info.index_type}, built in "
              f"{info.build_seconds:.1f} s", file=sys.stderr)  # fmt: skip
        versions.append(version)
    return versions[0], versions[1]


def search_only(data: Path, ann: str, flat: str, queries: int, seed: int) -> list[dict[str, Any]]:
    """The item search alone, in-process, with serving's own query vectors and exclusions."""
    from recsys.index.search import ItemIndex
    from recsys.settings import Paths
    from serving.load import load_version
    from serving.metrics import Metrics
    from serving.settings import ServingSettings
    from serving.state import ServingState
    from serving.threads import limit_threads

    limit_threads(1)  # as the server does: torch and BLAS on one thread
    loaded = load_version(Paths(data), ann, "matrix")
    state = ServingState(ServingSettings(data_dir=data), Metrics())
    state.open_store()
    users = loaded.seen.users
    rng = np.random.default_rng(seed)
    picks = rng.choice(users, queries)
    cases = []
    for user in picks.tolist():
        row = state.online_row("user_tower_serving_v1", user)
        exclude = np.union1d(loaded.seen.get(user), np.asarray(row["recent_item_ids"] or []))
        cases.append((loaded.query(user, row), exclude))
    truth = [set(loaded.index.search(q, 20, exclude=e)[0].tolist()) for q, e in cases]
    rows = []
    matrix = ItemIndex.open(data / "lancedb", ann, mode="matrix")
    lance_flat = ItemIndex.open(data / "lancedb", flat, mode="lance")
    indexes = [
        ("matrix", matrix),
        ("hnsw (in memory)", ItemIndex.open(data / "lancedb", ann, mode="hnsw")),
        # ef = max(100, 2 x rows fetched) per query (recsys.index.search ItemIndex._search_lance)
        ("lance ANN", ItemIndex.open(data / "lancedb", ann, mode="lance")),
        ("lance flat", lance_flat),
    ]
    for label, index in indexes:
        index.search(cases[0][0], 20, exclude=cases[0][1])  # warm-up
        lat, hits = [], 0
        for (q, e), want in zip(cases, truth, strict=True):
            t0 = time.perf_counter()
            got, _ = index.search(q, 20, exclude=e)
            lat.append(time.perf_counter() - t0)
            hits += len(want & set(got.tolist()))
        p50, p95, p99 = np.percentile(np.array(lat) * 1e3, [50, 95, 99])
        rows.append({"search": label, "p50": p50, "p95": p95, "p99": p99,
                     "recall": hits / (20 * len(cases)), "load": os.getloadavg()[0]})  # fmt: skip
    return rows


def tower_only(data: Path, queries: int, seed: int) -> list[dict[str, Any]]:
    """The user tower alone, in-process, on the served rows of random users: the module,
    TorchScript and ONNX Runtime (what serving picks, in this order of preference: onnx)."""
    from recsys.features.encoding import USER_TOWER_FILE
    from recsys.registry import ModelRegistry
    from recsys.settings import Paths
    from serving.load import load_version
    from serving.metrics import Metrics
    from serving.settings import ServingSettings
    from serving.state import ServingState
    from serving.threads import limit_threads
    from serving.tower import OnnxTower, torch_tower, traced_tower

    limit_threads(1)
    version = ModelRegistry(data / "models").current()
    assert version is not None
    loaded = load_version(Paths(data), version, "matrix")
    state = ServingState(ServingSettings(data_dir=data), Metrics())
    state.open_store()
    picks = np.random.default_rng(seed).choice(loaded.seen.users, queries).tolist()
    inputs = [loaded.rows.arrays(u, state.online_row("user_tower_serving_v1", u)) for u in picks]
    module = loaded.model.user_tower
    kinds = {"eager (PyTorch module)": torch_tower(module),
             "torchscript (traced)": traced_tower(module, inputs[:3]),
             "onnx (ONNX Runtime)": OnnxTower(ModelRegistry(data / "models").path(version)
                                              / USER_TOWER_FILE)}  # fmt: skip
    rows = []
    for label, tower in kinds.items():
        assert tower is not None, label
        for x in inputs[:20]:  # warm-up
            tower(x)
        lat = []
        for x in inputs:
            t0 = time.perf_counter()
            tower(x)
            lat.append(time.perf_counter() - t0)
        p50, p95, p99 = np.percentile(np.array(lat) * 1e3, [50, 95, 99])
        rows.append({"tower": label, "p50": p50, "p95": p95, "p99": p99,
                     "load": os.getloadavg()[0]})  # fmt: skip
    return rows


# --- main ------------------------------------------------------------------------------------
def user_paths(data: Path, n: int, seed: int) -> list[str]:
    import pandas as pd

    users = pd.read_parquet(data / "dataset" / "interactions.parquet", columns=["user_id"])
    picks = np.random.default_rng(seed).choice(users.user_id.unique(), n)
    return [f"/recommendations/{u}?k=20" for u in picks.tolist()]


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'catalogue':<10} {'search':<8} {'test':<12} {'requests':>8} {'errors':>6} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>8} {'max ms':>8} {'ok/s':>7} "
              f"{'load':>5} {'steal%':>6}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['phase']:<10} {r['search']:<8} {r['test']:<12} {r['requests']:>8} "
              f"{r['errors']:>6} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['p99']:>8.2f} "
              f"{r['max']:>8.1f} {r['throughput']:>7.1f} {r['load']:>5.1f} {r['steal']:>6.1f}"
              + (f"  {r['error_kinds']}" if r["error_kinds"] else ""))  # fmt: skip


def main() -> None:
    if sys.argv[1:] == ["--_load"]:  # the load generator's process; its test on stdin
        load_main(json.loads(sys.stdin.read()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data folder (copied)")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="open-loop duration")
    parser.add_argument("--repeat", type=int, default=1, help="open-loop tests per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop connections")
    parser.add_argument("--closed-seconds", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--catalogue", type=int, default=100_000,
                        help="items of the synthetic catalogue phase (0: skip it)")  # fmt: skip
    parser.add_argument("--search-queries", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--searches", nargs="+", default=["hnsw", "matrix", "ann", "flat"],
                        choices=["hnsw", "matrix", "ann", "flat"],
                        help="server phases of the catalogue (default: all four)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    data = work / "data"
    shutil.copytree(args.data, data, symlinks=True)
    paths = user_paths(data, 5000, args.seed)
    tower_rows = tower_only(data, args.search_queries, args.seed)
    rows = run_phase("ML-100K", data, "auto", paths, args)
    for row in rows:
        row["search"] = "matrix"  # what "auto" picks at this size
    search_rows: list[dict[str, Any]] = []
    if args.catalogue:
        from recsys.io import atomic_write_json
        from recsys.registry import ModelRegistry

        print(f"phase {args.catalogue} items: writing the tables", file=sys.stderr, flush=True)
        ann, flat = fake_versions(data, args.catalogue, args.seed)
        search_rows = search_only(data, ann, flat, args.search_queries, args.seed)
        registry = ModelRegistry(data / "models")
        label = f"{args.catalogue // 1000}K"
        phases = [(ann, "hnsw", "hnsw"), (ann, "matrix", "matrix"), (ann, "lance", "ann"),
                  (flat, "lance", "flat")]  # fmt: skip
        for version, mode, name in phases:
            if name not in args.searches:
                continue
            # Serving is pointed at each fake version through current.json directly: no
            # pipeline run built them, so the registry's promotion (recsys.registry) refuses.
            atomic_write_json(registry.root / "current.json", {"version": version})
            phase = run_phase(label, data, mode, paths, args)
            for row in phase:
                row["search"] = name
            rows += phase

    load = os.getloadavg()
    print(f"\nGET /recommendations/{{user}}?k=20, {args.workers} uvicorn worker(s), load generator in another "
          f"process, loopback; {os.cpu_count()} CPUs; load average now {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f} (load = mean 1-min load average during the test; "
          f"steal% = share of CPU time the hypervisor gave to other machines meanwhile)")  # fmt: skip
    print(f"open loop: {args.rate:g} requests/s for {args.seconds:g} s, latency from the "
          f"scheduled send time, timeout {args.timeout:g} s; closed loop: "
          f"{args.concurrency} connections for {args.closed_seconds:g} s")  # fmt: skip
    print_table(rows)
    print(f"\nuser tower only ({args.search_queries} users' online rows, batch of 1, 1 thread)")
    print(f"{'tower':<24} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'load':>5}")
    for r in tower_rows:
        print(f"{r['tower']:<24} {r['p50']:>7.3f} {r['p95']:>7.3f} {r['p99']:>7.3f} "
              f"{r['load']:>5.1f}")  # fmt: skip
    if search_rows:
        print(
            f"\nsearch only ({args.catalogue} items, d=65, top-20, each user's seen items "
            f"excluded, {args.search_queries} queries, 1 thread); recall vs the exact matrix"
        )
        print(f"{'search':<20} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'recall@20':>9} "
              f"{'load':>5}")  # fmt: skip
        for r in search_rows:
            print(f"{r['search']:<20} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['p99']:>7.2f} "
                  f"{r['recall']:>9.3f} {r['load']:>5.1f}")  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
