"""The Feast feature store of a data folder: configuration, ``apply`` and materialization.

``feature_repo/`` holds the definitions and ``feature_store.yaml``; this module builds a
``FeatureStore`` from them whose registry, online store and sources live in the configured
data folder, so several data folders (a test's ``tmp_path``, a backtest) never share state.
``import feast`` costs seconds, so it happens inside the functions that need it.

The profile (:class:`~recsys.settings.Settings` ``profile``) picks the engines, and nothing
else reads it: ``local`` keeps the registry and the SQLite online store as files in the data
folder; ``cluster`` renders ``feature_store.yaml`` with Feast's SQL registry on Postgres and
its ``redis`` online store. Under ``cluster`` the data folders stay apart through the Feast
``project``: Feast prefixes every registry row and suffixes every Redis key with it, and
:func:`feast_project` derives it from the data folder (or takes ``feast_project``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from recsys.features.catalog import CATALOG
from recsys.settings import FEATURE_REPO, Paths, Settings

if TYPE_CHECKING:
    from feast import FeatureStore

    from recsys.materialize import Materialization

_ENV_LOCK = threading.Lock()


def feast_project(settings: Settings, paths: Paths) -> str:
    """The Feast project of a data folder under the cluster profile: ``feast_project`` if
    set, else ``recsys_`` and a hash of the folder's absolute path."""
    if settings.feast_project:
        return settings.feast_project
    return "recsys_" + hashlib.sha256(str(paths.data_dir).encode()).hexdigest()[:12]


# Redis client timeouts when redis_url names none: a dead or unreachable server fails a
# call within seconds instead of hanging it (redis-py waits forever by default).
REDIS_TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}


def redis_connection_string(url: str) -> str:
    """Feast's ``host:port,key=value,...`` form of ``redis://[user:password@]host:port/db``
    (query parameters, e.g. ``?socket_timeout=1``, become redis-py arguments)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"RECSYS_REDIS_URL {url!r}: expected redis://host:port/db")
    params: dict[str, Any] = dict(REDIS_TIMEOUTS)
    params["db"] = int(parts.path.strip("/") or 0)
    if parts.username:
        params["username"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        params["ssl"] = "true"
    params.update(parse_qsl(parts.query))
    return ",".join(
        [f"{parts.hostname}:{parts.port or 6379}"] + [f"{k}={v}" for k, v in params.items()]
    )


def online_store_description(config: Any) -> str:
    """Where a Feast config's online store is, as messages name it (no password):
    ``redis at host:port db N`` or ``sqlite at <path>``."""
    online = config.online_store
    kind = getattr(online, "type", "?")
    if kind == "redis":
        from feast.infra.online_stores.redis import RedisOnlineStore

        nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
        where = ",".join(f"{n['host']}:{n['port']}" for n in nodes)
        return f"redis at {where} db {params.get('db', 0)}"
    return f"{kind} at {getattr(online, 'path', '?')}"


def _cluster(raw: dict[str, Any], settings: Settings, paths: Paths) -> dict[str, Any]:
    """``feature_store.yaml`` with the cluster profile's engines."""
    return {
        **raw,
        "project": feast_project(settings, paths),
        "registry": {
            "registry_type": "sql",
            "path": settings.postgres_url,
            # Connections checked before use: a restarted Postgres costs one retry, not an
            # error on the next registry read.
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        },
        "online_store": {
            "type": "redis",
            "redis_type": settings.redis_type,
            "connection_string": redis_connection_string(settings.redis_url),
        },
    }


def spark_offline_store(settings: Settings) -> dict[str, Any]:
    """The ``offline_store`` block of the Spark engine (`recsys.spark.offline_store`)."""
    return {
        "type": "recsys.spark.offline_store.SparkAsofOfflineStore",
        "master": settings.spark_master,
        "driver_memory": settings.spark_driver_memory,
        "shuffle_partitions": settings.spark_shuffle_partitions,
        "scratch": str(settings.paths.spark),
    }


def repo_config(
    paths: Paths, offline_store: dict[str, Any] | None = None, settings: Settings | None = None
) -> Any:
    """``feature_store.yaml`` for the data folder ``paths``, with the engines of
    ``settings``' profile (default: the ``RECSYS_*`` environment's): under ``local`` the
    registry and the online store are files moved into ``paths``. The offline store is
    ``offline_store`` if given, else the Spark store under engine "spark", else the file's
    (the project's DuckDB store)."""
    from feast.repo_config import RepoConfig

    if settings is None:
        folder: dict[str, Any] = {"data_dir": paths.data_dir}  # the rest from RECSYS_*
        settings = Settings(**folder)
    raw = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())
    paths.feast.mkdir(parents=True, exist_ok=True)
    if settings.profile == "cluster":
        raw = _cluster(raw, settings, paths)
    else:
        raw["registry"] = str(paths.feast / "registry.db")
        raw["online_store"] = {**raw["online_store"], "path": str(paths.feast / "online_store.db")}
    if offline_store is None and settings.engine == "spark":
        offline_store = spark_offline_store(settings)
    if offline_store is not None:
        raw["offline_store"] = offline_store
    return RepoConfig(repo_path=FEATURE_REPO, **raw)


def feature_store(
    paths: Paths, offline_store: dict[str, Any] | None = None, settings: Settings | None = None
) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(paths, offline_store, settings))


def feature_store_for(settings: Settings) -> FeatureStore:
    """The store of ``settings``' data folder, with its offline engine's store (DuckDB's with
    its memory limit)."""
    offline = None
    if settings.duckdb_memory_limit and settings.engine == "duckdb":
        raw = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())["offline_store"]
        if raw.get("type") == "recsys.offline_store.DuckDBAsofOfflineStore":
            offline = {**raw, "memory_limit": settings.duckdb_memory_limit}
    return feature_store(settings.paths, offline, settings)


@contextlib.contextmanager
def _data_dir_env(data_dir: Path) -> Iterator[None]:
    with _ENV_LOCK:
        before = os.environ.get("RECSYS_DATA_DIR")
        os.environ["RECSYS_DATA_DIR"] = str(data_dir)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("RECSYS_DATA_DIR", None)
            else:
                os.environ["RECSYS_DATA_DIR"] = before


def definitions(paths: Paths) -> Any:
    """The ``feature_repo/definitions.py`` module, evaluated for this data folder."""
    spec = importlib.util.spec_from_file_location(
        "feature_repo_definitions", FEATURE_REPO / "definitions.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _data_dir_env(paths.data_dir):
        spec.loader.exec_module(module)
    return module


def feast_objects(paths: Paths) -> list[Any]:
    """Every entity, feature view and feature service the definitions module declares."""
    from feast import Entity, FeatureService, FeatureView

    module = definitions(paths)
    kinds = (Entity, FeatureView, FeatureService)
    return [obj for obj in vars(module).values() if isinstance(obj, kinds)]


def apply(paths: Paths, store: FeatureStore | None = None) -> FeatureStore:
    """``feast apply`` through the Python API: register the definitions for this folder."""
    store = store or feature_store(paths)
    store.apply(feast_objects(paths))
    return store


# The views of the catalogue (built by recsys.features.build) that `materialize` loads into
# the online store; `user_candidates` is written there directly by towers.candidates.
SERVING_VIEWS = [view.name for view in CATALOG.views]


def materialize(
    paths: Paths, end: datetime, start: datetime | None = None, store: FeatureStore | None = None
) -> Materialization:
    """Load the online store with each entity's latest values in [``start``, ``end``].

    ``start`` defaults to the epoch, so static features are included. Every run covers
    every entity whose latest row changed since the previous run, whatever its timestamp
    (a late event rewrites rows older than the previous end), and writes only those
    (``recsys.materialize``).
    """
    from recsys.features.ops import EPOCH
    from recsys.materialize import materialize_changes

    store = store or feature_store(paths)
    return materialize_changes(store, SERVING_VIEWS, start or EPOCH, end, paths.online_snapshot)
