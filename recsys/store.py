"""The Feast feature store of a data folder: configuration, ``apply`` and materialization.

``feature_repo/`` holds the definitions and ``feature_store.yaml``; this module builds a
``FeatureStore`` from them whose registry, online store and sources live in the configured
data folder, so several data folders (a test's ``tmp_path``, a backtest) never share state.
``import feast`` costs seconds, so it happens inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from recsys.settings import FEATURE_REPO, Paths, Settings

if TYPE_CHECKING:
    from feast import FeatureStore

    from recsys.materialize import Materialization

_ENV_LOCK = threading.Lock()


def repo_config(paths: Paths, offline_store: dict[str, Any] | None = None) -> Any:
    """``feature_store.yaml`` with the registry and online store moved into ``paths``."""
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())
    paths.feast.mkdir(parents=True, exist_ok=True)
    raw["registry"] = str(paths.feast / "registry.db")
    raw["online_store"] = {**raw["online_store"], "path": str(paths.feast / "online_store.db")}
    if offline_store is not None:
        raw["offline_store"] = offline_store
    return RepoConfig(repo_path=FEATURE_REPO, **raw)


def feature_store(paths: Paths, offline_store: dict[str, Any] | None = None) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(paths, offline_store))


def feature_store_for(settings: Settings) -> FeatureStore:
    """The store of ``settings``' data folder, with its DuckDB memory limit applied to the
    project's offline store."""
    offline = None
    if settings.duckdb_memory_limit:
        raw = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())["offline_store"]
        if raw.get("type") == "recsys.offline_store.DuckDBAsofOfflineStore":
            offline = {**raw, "memory_limit": settings.duckdb_memory_limit}
    return feature_store(settings.paths, offline)


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


# The views built from the dataset's events (recsys.features) that `materialize` loads into
# the online store; `user_candidates` is written there directly by recsys.candidates.
SERVING_VIEWS = ["user_profile", "user_activity", "item_content", "item_popularity"]


def materialize(
    paths: Paths, end: datetime, start: datetime | None = None, store: FeatureStore | None = None
) -> Materialization:
    """Load the online store with each entity's latest values in [``start``, ``end``].

    ``start`` defaults to the epoch, so static features are included. Every run covers
    every entity whose latest row changed since the previous run, whatever its timestamp
    (a late event rewrites rows older than the previous end), and writes only those
    (``recsys.materialize``).
    """
    from recsys.features import EPOCH
    from recsys.materialize import materialize_changes

    store = store or feature_store(paths)
    return materialize_changes(store, SERVING_VIEWS, start or EPOCH, end, paths.online_snapshot)
