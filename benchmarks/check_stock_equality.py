"""Check: the project's offline store returns exactly the training set of Feast's stock DuckDB
store, on every interaction of a prepared data folder.

The stock store's join holds (entity rows x feature rows) per key in memory, so it gets the
entity rows in chunks (each row's result does not depend on the others); the project store
gets them all at once. Both results go to parquet and are compared with EXCEPT ALL both ways.

    python benchmarks/check_stock_equality.py --data benchmarks/results/data/synthetic-100000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys import store as feast_store  # noqa: E402
from recsys.features.build import default_as_of  # noqa: E402
from recsys.settings import Paths  # noqa: E402
from recsys.sql import connect, string  # noqa: E402
from recsys.training_set import FEATURE_SERVICE, entity_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a data folder with features")
    parser.add_argument("--chunk", type=int, default=5_000, help="entity rows per stock call")
    args = parser.parse_args()
    paths = Paths(args.data)
    as_of = default_as_of(paths.dataset)
    rows = entity_rows(paths.dataset, as_of)
    out = paths.data_dir / "bench-out"
    out.mkdir(exist_ok=True)
    ours, theirs = out / "project.parquet", out / "stock.parquet"

    start = time.perf_counter()
    project = feast_store.feature_store(paths)
    service = project.get_feature_service(FEATURE_SERVICE)
    project.get_historical_features(entity_df=rows, features=service).to_parquet(ours)
    print(f"project store: {time.perf_counter() - start:.1f} s for {len(rows):,} rows")

    start = time.perf_counter()
    stock = feast_store.feature_store(paths, {"type": "duckdb"})
    writer = None
    for i in tqdm(range(0, len(rows), args.chunk), desc="stock store chunks"):
        table = stock.get_historical_features(
            entity_df=rows.iloc[i : i + args.chunk], features=service
        ).to_arrow()
        table = table.select(pq.read_schema(ours).names)
        if writer is None:
            writer = pq.ParquetWriter(theirs, table.schema)
        writer.write_table(table.cast(writer.schema))
    assert writer is not None
    writer.close()
    print(f"stock store: {time.perf_counter() - start:.1f} s in chunks of {args.chunk:,}")

    con = connect()
    columns = ", ".join(f'"{c}"' for c in pq.read_schema(ours).names)
    a, b = (f"read_parquet({string(str(p))})" for p in (ours, theirs))
    counts = [
        con.execute(
            f"SELECT count(*) FROM (SELECT {columns} FROM {x} EXCEPT ALL SELECT {columns} FROM {y})"
        ).fetchone()[0]  # fmt: skip
        for x, y in ((a, b), (b, a))
    ]
    n = [pq.ParquetFile(p).metadata.num_rows for p in (ours, theirs)]
    same = counts == [0, 0] and n[0] == n[1] == len(rows)
    print(f"rows: project {n[0]:,}, stock {n[1]:,}; only in project {counts[0]}, "
          f"only in stock {counts[1]}: {'IDENTICAL' if same else 'DIFFERENT'}")  # fmt: skip
    ours.unlink()
    theirs.unlink()
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
