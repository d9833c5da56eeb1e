"""The profile selects Feast's engines by configuration alone: ``local`` keeps the data
folder's files, ``cluster`` renders Feast's SQL registry and redis online store, with one
Feast project per data folder (no service is contacted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.settings import Paths, Settings
from recsys.store import online_store_description, redis_connection_string, repo_config


def test_local_profile_keeps_files_in_the_data_folder(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    config = repo_config(paths, settings=Settings(data_dir=paths.data_dir))
    assert config.project == "recsys"
    assert config.registry.path == str(paths.feast / "registry.db")
    assert config.online_store.type == "sqlite"
    assert config.online_store.path == str(paths.feast / "online_store.db")


def test_cluster_profile_renders_redis_and_sql_registry(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "a", profile="cluster",
                        redis_url="redis://:s%40cret@redis.example:6380/3?socket_timeout=0.5",
                        postgres_url="postgresql+psycopg://u:p@db.example:5433/feast")  # fmt: skip
    config = repo_config(settings.paths, settings=settings)
    assert config.registry.registry_type == "sql"
    assert config.registry.path == "postgresql+psycopg://u:p@db.example:5433/feast"
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == (
        "redis.example:6380,socket_timeout=0.5,socket_connect_timeout=2.0,db=3,password=s@cret"
    )
    assert online_store_description(config) == "redis at redis.example:6380 db 3"
    # The offline engine follows the profile (Spark under cluster) unless set.
    assert config.offline_store.type == "recsys.spark.offline_store.SparkAsofOfflineStore"
    local = repo_config(settings.paths, settings=Settings(data_dir=settings.data_dir))
    duck = Settings(data_dir=settings.data_dir, profile="cluster", offline_engine="duckdb")
    assert repo_config(duck.paths, settings=duck).offline_store == local.offline_store

    other = Settings(data_dir=tmp_path / "b", profile="cluster")
    projects = {repo_config(s.paths, settings=s).project for s in (settings, other)}
    assert len(projects) == 2 and all(p.startswith("recsys_") for p in projects)
    assert repo_config(settings.paths, settings=settings).project in projects  # stable
    named = Settings(data_dir=tmp_path / "b", profile="cluster", feast_project="shared_1")
    assert repo_config(named.paths, settings=named).project == "shared_1"


def test_profile_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_PROFILE", "cluster")
    monkeypatch.setenv("RECSYS_REDIS_URL", "rediss://user:pw@10.0.0.5/0")
    config = repo_config(Paths(tmp_path / "data"))  # no settings: RECSYS_* and defaults
    assert config.online_store.connection_string == (
        "10.0.0.5:6379,socket_timeout=5.0,socket_connect_timeout=2.0,db=0,"
        "username=user,password=pw,ssl=true"
    )
    assert config.registry.path == Settings().postgres_url


def test_bad_redis_url_names_the_setting() -> None:
    with pytest.raises(ValueError, match="RECSYS_REDIS_URL"):
        redis_connection_string("http://127.0.0.1:6379")
