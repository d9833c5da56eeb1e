"""Benchmark of the artifact store (recsys.objectstore) against an S3-compatible server.

    python benchmarks/bench_artifact_store.py --data /tmp/ml/data \
        --endpoint http://127.0.0.1:9000 --repeat 3

The data folder (one with a promoted version, e.g. from ``recsys pipeline``) is only read.
Each repeat creates a fresh bucket on the server and times, in process:

1. publication: the dataset and feature folders, then the current version's files and
   manifest, then its item table (what ``promoted_model`` does before the pointer);
2. a replica's first load: the version's files downloaded and checked against the manifest
   into an empty cache, the dataset and features likewise, then its item table opened on
   the store (``ItemIndex.open``, matrix mode) beside the same table opened locally;
3. the watcher's tick: reading the store's pointer (``--pointer-reads`` GETs, p50 and p99).

Credentials come from the AWS variables (any value for moto).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from recsys.index.search import ItemIndex
from recsys.objectstore import ArtifactStore
from recsys.registry import ModelRegistry
from recsys.settings import Paths


def run(paths: Paths, endpoint: str, pointer_reads: int) -> dict[str, float]:
    registry = ModelRegistry(paths.models)
    version = registry.current()
    if version is None:
        raise SystemExit(f"no current version in {paths.models}")
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    store = ArtifactStore(f"s3://{bucket}/recsys", endpoint)
    store.client.create_bucket(Bucket=bucket)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    store.publish_served_folders(paths)
    out["publish folders s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = store.publish_version(registry.path(version), version)
    out["publish version files s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.publish_table(paths.lancedb, version)
    out["publish item table s"] = time.perf_counter() - t0
    store.write_pointer({"version": version, "promoted_at": "bench", "previous": None})
    out["version MB"] = sum(f["size"] for f in manifest["files"].values()) / 1e6
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        store.fetch_version(version, Path(cache))
        out["fetch version s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name in ("dataset", "features"):
            store.fetch_folder(name, Path(cache))
        out["fetch folders s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = ItemIndex.open(store.lancedb_uri, version, mode="matrix",
                            storage_options=store.storage_options)  # fmt: skip
    out["open table on store s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ItemIndex.open(paths.lancedb, version, mode="matrix")
    out["open table locally s"] = time.perf_counter() - t0
    out["items"] = remote.rows
    times = []
    for _ in range(pointer_reads):
        t0 = time.perf_counter()
        store.current()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    out["pointer read p50 ms"] = statistics.median(times)
    out["pointer read p99 ms"] = times[int(0.99 * (len(times) - 1))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pointer-reads", type=int, default=200)
    args = parser.parse_args()
    runs = [run(Paths(args.data), args.endpoint, args.pointer_reads) for _ in range(args.repeat)]
    for key in runs[0]:
        values = ", ".join(f"{r[key]:.3f}" for r in runs)
        print(f"{key:>24}: {values}")  # noqa: T201


if __name__ == "__main__":
    main()
