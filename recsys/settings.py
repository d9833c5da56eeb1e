"""One place for the pipeline's configuration and the paths of everything it writes.

Settings come from (highest priority first) explicit arguments, environment variables with
the ``RECSYS_`` prefix, and the defaults below. Every artifact path is derived from
``data_dir`` by :class:`Paths`, so moving the data folder moves everything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = PROJECT_ROOT / "feature_repo"


class Settings(BaseSettings):
    """Pipeline configuration; ``RECSYS_<FIELD>`` environment variables override defaults."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", frozen=True)

    # Where raw downloads, the canonical dataset, features, the Feast registry and online
    # store, and training sets live. Ignored by git.
    data_dir: Path = PROJECT_ROOT / "data"
    # Which dataset to ingest: "movielens-100k" (real, fetched and cached), "synthetic"
    # (generated, see synthetic_*), or a path to a folder (a canonical folder, or the
    # original GroupLens ml-100k/ folder).
    dataset: str = "movielens-100k"
    # "Now" for the pipeline: features, training data and online state use only events
    # strictly before it. None means just after the last event (everything is visible).
    as_of: datetime | None = None
    # Temporal split cut points: train < val_start <= validation < test_start <= test < as_of.
    # Left as None they are the quantiles of the event timestamps given by the fractions.
    val_start: datetime | None = None
    test_start: datetime | None = None
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    # How many of a user's most recent items the activity features keep (history pooling in
    # the user tower, already-seen filtering at serve time).
    recent_items: int = Field(20, ge=1, le=200)
    # DuckDB memory limit for the feature SQL and the offline store's joins (e.g. "3GB");
    # past it DuckDB spills to disk instead of growing. None: DuckDB's default, 80% of RAM.
    duckdb_memory_limit: str | None = None
    # Synthetic dataset: number of interactions and seed (used when dataset == "synthetic").
    synthetic_interactions: int = Field(100_000, ge=1_000, le=50_000_000)
    synthetic_seed: int = 0
    # Which engines hold the shared state (recsys.store renders Feast's config from it):
    # "local", every store a file in data_dir (SQLite online store, file registry); "cluster",
    # Feast's online store in Redis at redis_url and its registry in Postgres at
    # postgres_url (Feast's SQL registry), so several hosts and writers share them.
    profile: Literal["local", "cluster"] = "local"
    # Redis of the cluster profile: redis://[:password@]host:port/db (rediss:// for TLS).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # "redis_cluster" for a Redis Cluster (redis_url names one of its nodes).
    redis_type: Literal["redis", "redis_cluster"] = "redis"
    # Postgres of the cluster profile, an SQLAlchemy URL (psycopg 3 driver).
    postgres_url: str = "postgresql+psycopg://recsys:recsys@127.0.0.1:5432/recsys"
    # Feast project under the cluster profile, the namespace of this data folder's keys in
    # Redis and of its definitions in the registry. None: derived from the data folder's
    # path (recsys.store.feast_project), so two data folders never share online values;
    # set it when replicas on other hosts mount the data folder at another path.
    feast_project: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")
    # Where model versions, their LanceDB item tables and the registry's pointer are
    # published for other hosts (recsys.objectstore): "s3://bucket/prefix" on S3 or any
    # S3-compatible store. None: they live only in data_dir, as on one machine. Credentials
    # come from the AWS chain (AWS_ACCESS_KEY_ID..., ~/.aws), never from these settings.
    artifact_store: str | None = Field(
        None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
    )
    # The S3 API's URL of an S3-compatible store (MinIO, moto, Ceph...); None: AWS's own.
    s3_endpoint_url: str | None = None
    # The store's region; None: the AWS chain's (AWS_REGION, ~/.aws/config), else us-east-1.
    s3_region: str | None = None

    # Distributed training (towers.ddp): processes per host that train the release's refits
    # (the served checkpoint, and the test-window refit when asked) under torch.distributed
    # over gloo, launched by torchrun as a subprocess; 1 trains in this process, as always.
    train_processes: int = Field(1, ge=1)
    # Hosts taking part. With more than one, this host's torchrun meets the others at
    # train_rdzv_endpoint, and each other host runs the command towers.ddp logs (the same
    # job folder, under data_dir/.ddp, on a shared mount).
    train_nnodes: int = Field(1, ge=1)
    # host:port of the c10d rendezvous (any host's free port) when train_nnodes > 1; None
    # with one host: a standalone rendezvous on a free local port.
    train_rdzv_endpoint: str | None = Field(None, pattern=r"^[^:\s]+:[0-9]+$")
    # A collective that waits longer than this fails the run instead of hanging it (a rank
    # that died on another host; torchrun stops this host's ranks itself).
    train_timeout_seconds: float = Field(1800.0, gt=0)
    # With one training process and two cores or more, train beside the tuning in a child
    # process (towers.parallel): the probe epochs of its candidates, every other one, and
    # the refit on all data, started as soon as the tuning has picked the run that goes on
    # to its early stop. The same weights, bit for bit; less wall time. A child holds its
    # own copy of the encoded rows (memory).
    train_in_parallel: bool = True

    # The offline engine: what computes the feature tables and the training set's
    # point-in-time join. None: "spark" under the cluster profile, "duckdb" under local
    # (see `engine`). Both write the same tables from the same declarations.
    offline_engine: Literal["duckdb", "spark"] | None = None
    # Spark master URL: local[N] runs in this process's JVM; spark://host:7077 or k8s://...
    # for a cluster.
    spark_master: str = "local[2]"
    # The Spark driver's heap (spark.driver.memory); the features' collect to Arrow lands here.
    spark_driver_memory: str = "2g"
    # Spark shuffle partitions: a few per core on local[2]; raise it on a cluster.
    spark_shuffle_partitions: int = Field(4, ge=1)

    @field_validator("as_of", "val_start", "test_start")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # Naive timestamps are read as UTC, the timezone of every stored timestamp.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Settings:
        if self.val_start and self.test_start and self.val_start >= self.test_start:
            raise ValueError(
                f"val_start ({self.val_start}) must be before test_start ({self.test_start})"
            )
        if self.train_nnodes > 1 and self.train_rdzv_endpoint is None:
            raise ValueError("train_nnodes > 1 needs train_rdzv_endpoint (host:port)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave room for training")
        return self

    @cached_property
    def paths(self) -> Paths:
        return Paths(self.data_dir)

    @property
    def engine(self) -> Literal["duckdb", "spark"]:
        """The offline engine in effect: ``offline_engine``, else the profile's default."""
        if self.offline_engine is not None:
            return self.offline_engine
        return "spark" if self.profile == "cluster" else "duckdb"


def settings_from(**values: Any) -> Settings:
    """Settings with the given values where they are not None; the rest from ``RECSYS_*``
    variables and defaults (what a CLI flag or a Dagster resource field left empty means)."""
    return Settings(**{key: value for key, value in values.items() if value is not None})


def run_as_of(settings: Settings) -> Any:
    """A run's "now": the configured ``as_of``, else just after the dataset's last event."""
    from recsys.features.build import default_as_of

    return settings.as_of or default_as_of(settings.paths.dataset)


class Paths:
    """Every file the pipeline reads or writes, derived from one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()

    @property
    def raw(self) -> Path:
        """Downloads cache (the MovieLens wheel and its verified files)."""
        return self.data_dir / "raw"

    @property
    def dataset(self) -> Path:
        """The ingested canonical dataset: users / items / interactions parquet."""
        return self.data_dir / "dataset"

    @property
    def features(self) -> Path:
        """One parquet time series per feature view, read by Feast's offline store."""
        return self.data_dir / "features"

    @property
    def feast(self) -> Path:
        """Feast registry and SQLite online store."""
        return self.data_dir / "feast"

    @property
    def online_snapshot(self) -> Path:
        """What the last materialization left online, one parquet per view: the next run
        writes only the entities whose latest values differ (recsys.materialize)."""
        return self.feast / "online_snapshot"

    @property
    def training(self) -> Path:
        """Point-in-time training set with its temporal split."""
        return self.data_dir / "training"

    @property
    def spark(self) -> Path:
        """Spark's scratch space (shuffle spills, warehouse) when the offline engine is Spark."""
        return self.data_dir / ".spark"

    @property
    def incoming(self) -> Path:
        """New interaction batches (parquet files) dropped here are picked up by the
        pipeline's sensor; ``processed/`` and ``rejected/`` keep every batch it has seen."""
        return self.data_dir / "incoming"

    @property
    def models(self) -> Path:
        """The model registry: versions, the ``current.json`` switch (recsys.registry)."""
        return self.data_dir / "models"

    @property
    def lancedb(self) -> Path:
        """LanceDB database: one item-embedding table per model version (recsys.index)."""
        return self.data_dir / "lancedb"

    @property
    def candidates(self) -> Path:
        """The current version's top-K candidates, the batch source of Feast's
        ``user_candidates`` view."""
        return self.data_dir / "candidates"

    @property
    def artifact_cache(self) -> Path:
        """Model versions downloaded from the artifact store, verified by their manifest
        (recsys.objectstore), and the HNSW graphs of the store's item tables."""
        return self.data_dir / ".artifact_cache"
