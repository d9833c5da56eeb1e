"""Benchmark: feature tables and the point-in-time training set on Spark against DuckDB, side
by side in one process, alternating engines, several rounds each.

A synthetic dataset is ingested once (cached under --work); each engine gets a data folder
whose ``dataset`` links to it. Each round, for each engine (the order alternates between
rounds): ``features`` (`recsys.features.build.compute_features` into a fresh folder, then
published) and ``training_set`` (the Feast point-in-time join of every interaction before
``as_of``, streamed to parquet: `recsys.training_set._join_to_parquet`). The SparkSession
(JVM start) is created once before the rounds and timed apart. At the end both engines'
outputs are compared: every feature table exactly (created time aside), the training sets
row for row (DuckDB ``EXCEPT ALL`` both ways).

    flock /tmp/measure.lock nice -n 5 python benchmarks/bench_spark.py --size 1000000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENGINES = ("duckdb", "spark")


def prepare(work: Path, size: int, seed: int) -> Path:
    """The ingested synthetic dataset (cached), and one data folder per engine linking it."""
    from recsys.ingest import ingest
    from recsys.settings import Settings

    source = work / f"synthetic-{size}-{seed}"
    if not (source / "dataset" / "manifest.json").exists():
        ingest(Settings(data_dir=source, dataset="synthetic", synthetic_interactions=size,
                        synthetic_seed=seed))  # fmt: skip
    for engine in ENGINES:
        folder = work / f"bench-{engine}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "dataset").symlink_to((source / "dataset").resolve())
    return source


def features_round(settings: object) -> float:
    from recsys.features.build import compute_features

    out = settings.paths.features  # type: ignore[attr-defined]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    compute_features(settings.paths.dataset, out, settings=settings)  # type: ignore[attr-defined]
    return time.perf_counter() - start


def training_round(settings: object, store: object, as_of: object) -> float:
    from recsys.training_set import _join_to_parquet

    out = settings.paths.training / "joined.parquet"  # type: ignore[attr-defined]
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _join_to_parquet(store, settings.paths.dataset, as_of, out)  # type: ignore[attr-defined]
    return time.perf_counter() - start


def feast_spark_round(settings: object, store: object, as_of: object) -> tuple[float, str]:
    """Feast's own Spark offline store (``SparkSource``s over the same tables) on the same
    entity rows: its time to an Arrow table, and whether its rows equal ours (values compared
    by DuckDB, which casts its doubles and naive timestamps back)."""
    import copy

    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    from recsys import store as feast_store
    from recsys.features.dialect import to_spark
    from recsys.spark.session import spark_session
    from recsys.sql import connect
    from recsys.training_set import FEATURE_SERVICE, entity_rows

    paths = settings.paths  # type: ignore[attr-defined]
    conf = {"spark.master": settings.spark_master, "spark.sql.session.timeZone": "UTC"}  # type: ignore[attr-defined]
    config = feast_store.repo_config(paths, {"type": "spark", "spark_conf": conf}, settings)  # type: ignore[arg-type]
    views, refs = [], []
    for p in store.get_feature_service(FEATURE_SERVICE).feature_view_projections:  # type: ignore[attr-defined]
        view = copy.copy(store.get_feature_view(p.name))  # type: ignore[attr-defined]
        view.batch_source = SparkSource(
            name=view.batch_source.name, path=str(paths.features / f"{p.name}.parquet"),
            file_format="parquet", timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
        )  # fmt: skip
        views.append(view)
        refs += [f"{p.name}:{f.name}" for f in p.features]
    spark = spark_session(settings)  # type: ignore[arg-type]
    rows = spark.sql(to_spark(entity_rows(paths.dataset, as_of, as_sql=True)))  # type: ignore[arg-type]
    start = time.perf_counter()
    table = SparkOfflineStore.get_historical_features(
        config,
        views,
        refs,
        rows,
        store.registry,
        store.project,  # type: ignore[attr-defined]
    ).to_arrow()
    seconds = time.perf_counter() - start
    ours = paths.training / "joined.parquet"
    con = connect()
    con.register("theirs", table)
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    apart = [
        con.execute(f"SELECT count(*) FROM (SELECT {columns} FROM {p} EXCEPT ALL "
                    f"SELECT {columns} FROM {q})").fetchone()[0]  # type: ignore[index]
        for p, q in (("theirs", f"read_parquet('{ours}')"), (f"read_parquet('{ours}')", "theirs"))
    ]  # fmt: skip
    same = "same rows" if apart == [0, 0] else f"DIFFERENT ({apart[0]} / {apart[1]} rows apart)"
    return (
        seconds,
        f"{same} as ours ({table.num_rows:,}), counts as {table.schema.field('user_interaction_count').type}",
    )


def compare(duck: object, spark: object) -> str:
    """Whether both engines' tables and training sets are identical."""
    import pyarrow.parquet as pq

    from recsys.features.catalog import CATALOG
    from recsys.sql import connect, string

    notes = []
    for view in CATALOG.views:
        a, b = (
            pq.read_table(s.paths.features / f"{view.name}.parquet").drop_columns(  # type: ignore[attr-defined]
                ["created_timestamp"]
            )
            for s in (duck, spark)
        )
        notes.append(f"{view.name} {'identical' if a.equals(b) else 'DIFFERENT'} ({a.num_rows:,})")
    x, y = (
        f"read_parquet({string(str(s.paths.training / 'joined.parquet'))})"  # type: ignore[attr-defined]
        for s in (duck, spark)
    )
    con = connect()
    only = [
        con.execute(
            f"SELECT count(*) FROM (SELECT * FROM {p} EXCEPT ALL SELECT * FROM {q})"
        ).fetchone()[0]  # type: ignore[index]
        for p, q in ((x, y), (y, x))
    ]
    rows = con.execute(f"SELECT count(*) FROM {x}").fetchone()[0]  # type: ignore[index]
    same = "identical" if only == [0, 0] else f"DIFFERENT ({only[0]} / {only[1]} rows apart)"
    notes.append(f"training set {same} ({rows:,} rows)")
    return "; ".join(notes)


def spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):7.2f} s  min {min(values):7.2f}  "
        f"max {max(values):7.2f}  ({', '.join(f'{v:.2f}' for v in values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="synthetic interactions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--master", default="local[2]", help="Spark master URL")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--feast-spark", action="store_true",
                        help="also time Feast's own Spark offline store once, at the end")  # fmt: skip
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "spark")
    args = parser.parse_args()

    from recsys import store as feast_store
    from recsys.features.build import default_as_of
    from recsys.settings import Settings
    from recsys.spark.session import spark_session

    source = prepare(args.work, args.size, args.seed)
    settings = {
        engine: Settings(data_dir=args.work / f"bench-{engine}", offline_engine=engine,
                         spark_master=args.master, spark_driver_memory=args.driver_memory)
        for engine in ENGINES
    }  # fmt: skip
    as_of = default_as_of(source / "dataset")
    start = time.perf_counter()
    spark_session(settings["spark"])
    print(f"{args.size:,} synthetic interactions; Spark {args.master}, session start "
          f"{time.perf_counter() - start:.2f} s (once, not in the rounds)", flush=True)  # fmt: skip
    stores = {}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = ENGINES if r % 2 == 0 else ENGINES[::-1]
        for engine in order:
            s = settings[engine]
            f = features_round(s)
            if engine not in stores:
                stores[engine] = feast_store.apply(s.paths, feast_store.feature_store_for(s))
            t = training_round(s, stores[engine], as_of)
            times.setdefault((engine, "features"), []).append(f)
            times.setdefault((engine, "training_set"), []).append(t)
            print(f"round {r + 1} {engine:>6}: features {f:7.2f} s, training set {t:7.2f} s",
                  flush=True)  # fmt: skip
    for step in ("features", "training_set"):
        for engine in ENGINES:
            print(f"{step:>12} {engine:>6}: {spread(times[(engine, step)])}")
        ratio = statistics.median(times[("spark", step)]) / statistics.median(
            times[("duckdb", step)]
        )
        print(f"{step:>12}  spark / duckdb (medians): {ratio:.2f}x")
    print(compare(settings["duckdb"], settings["spark"]))
    if args.feast_spark:
        seconds, note = feast_spark_round(settings["spark"], stores["spark"], as_of)
        print(f"training_set feast's spark store: {seconds:.2f} s ({note})")


if __name__ == "__main__":
    main()
