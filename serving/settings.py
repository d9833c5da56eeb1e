"""Settings of the online API: ``RECSYS_SERVING_<FIELD>`` environment variables or arguments.

Kept apart from :class:`recsys.settings.Settings` (prefix ``RECSYS_``) because a server has
its own knobs (address, polling interval, limits) that mean nothing to the pipeline; the
one thing they share, the data folder, defaults to the pipeline's so that ``recsys
pipeline`` followed by ``python -m serving`` serves what the pipeline just promoted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.index.hnsw import HNSW_EF_SEARCH
from recsys.settings import Settings


def _pipeline_data_dir() -> Path:
    # Evaluated when the settings are built, so RECSYS_DATA_DIR set by then is honoured.
    none: dict[str, Any] = {}
    return Settings(**none).data_dir


class ServingSettings(BaseSettings):
    """Configuration of one server process."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_SERVING_", frozen=True)

    # The pipeline's data folder: models/current.json, the LanceDB tables, the Feast online
    # store and the dataset (for each user's already-seen items).
    data_dir: Path = Field(default_factory=_pipeline_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # How often the background watcher reads models/current.json (and the dataset link) to
    # notice a promotion; a switch is served at most this long after it happened.
    reload_interval_seconds: float = Field(1.0, gt=0, le=3600)
    # A version that failed to load is retried at most this often (the error stays visible
    # in /readyz meanwhile).
    retry_failed_seconds: float = Field(10.0, gt=0, le=3600)
    # recsys.index.search.ItemIndex search mode: "auto" keeps up to 32M floats in memory, scanned
    # whole (exact) below 50K items and searched through an HNSW graph from there, and uses
    # LanceDB's ANN index beyond (that module has the measurements).
    search_mode: Literal["auto", "matrix", "hnsw", "lance"] = "auto"
    # The HNSW graph's search breadth: higher finds more of the exact top-k, slower
    # (recsys.index.search has the measurements at the default).
    hnsw_ef: int = Field(HNSW_EF_SEARCH, ge=16, le=8192)
    # Online feature lookups: "direct" reads Feast's SQLite or Redis online store itself
    # (same values, a quarter of the time, one round trip: serving.online), "feast" through
    # FeatureStore's API. "direct" falls back to "feast" for other online stores.
    online_reader: Literal["direct", "feast"] = "direct"
    # A direct Redis lookup that gets no answer within this time fails (503): a dead or
    # unreachable Redis never holds a request longer.
    online_timeout_seconds: float = Field(1.0, gt=0, le=60)
    # Request bodies above this size get 413 before they are read into memory. The largest
    # valid cold-start body (1,000 interactions with int64 ids, ratings and timestamps, every
    # string at its maximum length as \u escapes) is 115 KB as json.dumps writes it, 143 KB
    # indented: the limit leaves room for both, so that a valid body is never a 413.
    max_body_bytes: int = Field(262_144, ge=1024)
    # Compute threads of torch and of numpy's BLAS: one, because a request is one small
    # forward pass and one matrix-vector product, and a second thread only adds
    # synchronisation to them (serving.threads has the measurement; scale with processes).
    compute_threads: int = Field(1, ge=1)
    # GET /recommendations/{user_id} answered without FastAPI's request machinery when the
    # request is plainly valid (serving.fast_path.KnownUserFastPath: the same answers for less CPU
    # per request); off, every request goes through the FastAPI route.
    fast_path: bool = True
    log_level: str = "info"
    access_log: bool = False
