"""A Spark DataFrame into one parquet file with a given Arrow schema, in bounded memory.

Spark writes a folder of part files (in the frame's order: a sorted frame's parts are its
ranges, in name order); they are streamed, batch by batch and cast to the schema, into the
single file every reader of the data folder expects, written under a temp name and renamed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``schema``'s types: Spark names list children ``element`` (DuckDB and
    pyarrow: ``item``) and marks some columns not-null."""
    return pa.RecordBatch.from_arrays(
        [batch.column(f.name).cast(f.type) for f in schema], schema=schema
    )


def write_parquet(frame: DataFrame, out: Path, schema: pa.Schema | None = None) -> int:
    """Write ``frame`` to the single parquet file ``out`` (its columns cast to ``schema``, if
    given); the number of rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_name(f".{out.name}.spark-{uuid.uuid4().hex[:8]}")
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        frame.write.option("compression", "zstd").parquet(str(folder))
        parts = sorted(folder.glob("part-*.parquet"))
        schema = schema or pq.read_schema(parts[0])
        rows = 0
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=256_000):
                    writer.write_batch(cast_batch(batch, schema))
                    rows += batch.num_rows
        os.replace(tmp, out)
        return rows
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
