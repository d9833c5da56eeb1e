"""One SparkSession per process, built from :class:`~recsys.settings.Settings`.

Spark starts a JVM once per process and a session's master cannot change after that, so the
first caller's settings build it and later callers reuse it; asking for another master
raises instead of silently running on the first one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_LOCK = threading.Lock()
_SESSION: SparkSession | None = None


def spark_session(settings: Settings) -> SparkSession:
    """The process's SparkSession, created from ``settings`` on first use."""
    return session(
        settings.spark_master,
        settings.spark_driver_memory,
        settings.spark_shuffle_partitions,
        settings.paths.spark,
    )


def session(
    master: str, driver_memory: str, shuffle_partitions: int, scratch: Path
) -> SparkSession:
    """The process's SparkSession on ``master``, created on first use with Spark's scratch
    space under ``scratch`` (the Feast offline store's config passes these)."""
    global _SESSION
    from pyspark.sql import SparkSession

    with _LOCK:
        if _SESSION is not None and _SESSION.sparkContext._jsc is not None:
            running = _SESSION.sparkContext.master
            if running != master:
                raise RuntimeError(
                    f"a SparkSession on {running} already runs in this process; "
                    f"RECSYS_SPARK_MASTER={master} needs a new process"
                )
            return _SESSION
        scratch.mkdir(parents=True, exist_ok=True)
        builder = (
            SparkSession.builder.master(master)
            .appName("recsys")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            # Timestamps are UTC everywhere (DuckDB's connections too, `recsys.sql.connect`).
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
            .config("spark.driver.memory", driver_memory)
            .config("spark.local.dir", str(scratch / "local"))
            .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
            # Arrow moves the results to the driver as columns (DataFrame.toArrow).
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # Parquet timestamps as INT64 microseconds, the unit every table stores.
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        )
        _SESSION = builder.getOrCreate()
        _SESSION.sparkContext.setLogLevel("ERROR")
        return _SESSION


def stop_session() -> None:
    """Stop the process's session (its JVM stays; the next `spark_session` starts another)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None:
            _SESSION.stop()
            _SESSION = None
