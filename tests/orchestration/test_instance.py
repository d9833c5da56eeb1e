"""`recsys pipeline`'s Dagster instance folder (orchestration.instance.dagster_home):
--dagster-home, else $DAGSTER_HOME, else the project's dagster_home/; created with the
repo's dagster.yaml, a user's own file kept, a relative storage path refused with the file
and key named."""

import shutil
from pathlib import Path

import pytest

from orchestration import instance

ROOT = Path(__file__).resolve().parents[2]


def test_flag_then_env_then_project_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "dagster.yaml", project / "dagster.yaml")
    monkeypatch.setattr("orchestration.instance.PROJECT_ROOT", project)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert instance.dagster_home() == project / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "from_env"))
    assert instance.dagster_home() == tmp_path / "from_env"
    assert instance.dagster_home(tmp_path / "flag") == tmp_path / "flag"
    for home in ("dagster_home", "from_env", "flag"):
        folder = tmp_path / home if home != "dagster_home" else project / home
        assert (folder / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()


def test_existing_config_is_kept(tmp_path):
    own = "telemetry:\n  enabled: false\n"
    (tmp_path / "dagster.yaml").write_text(own)
    assert instance.dagster_home(tmp_path) == tmp_path
    assert (tmp_path / "dagster.yaml").read_text() == own


@pytest.mark.parametrize(
    "config, field",
    [("storage:\n  sqlite:\n    base_dir: storage\n", "storage.sqlite.base_dir"),
     ("compute_logs:\n  module: m\n  class: C\n  config:\n    base_dir: logs\n",
      "compute_logs.config.base_dir")],
)  # fmt: skip
def test_relative_storage_path_is_refused(tmp_path, config, field):
    (tmp_path / "dagster.yaml").write_text(config)
    with pytest.raises(SystemExit, match=rf"dagster.yaml: {field} is the relative path"):
        instance.dagster_home(tmp_path)


def test_absolute_storage_path_is_accepted(tmp_path):
    (tmp_path / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {tmp_path}/s\n")
    assert instance.dagster_home(tmp_path) == tmp_path


def test_repo_config_has_no_relative_paths_and_keeps_queue_and_telemetry_off():
    import yaml

    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert "storage" not in config and "compute_logs" not in config  # defaults: DAGSTER_HOME
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["telemetry"]["enabled"] is False


def test_cluster_profile_stores_runs_in_postgres_named_by_the_environment(tmp_path):
    import yaml

    from orchestration.instance import POSTGRES_URL_VARIABLE

    config = yaml.safe_load(
        (instance.dagster_home(tmp_path, "cluster") / "dagster.yaml").read_text()
    )
    assert config["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_VARIABLE}}}
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert {k: v for k, v in config.items() if k != "storage"} == local  # queue, telemetry


def test_cluster_profile_refuses_an_instance_kept_from_the_local_profile(tmp_path):
    instance.dagster_home(tmp_path, "local")
    with pytest.raises(SystemExit, match="its storage is sqlite, but the profile is cluster"):
        instance.dagster_home(tmp_path, "cluster")
    (tmp_path / "dagster.yaml").unlink()
    assert instance.dagster_home(tmp_path, "cluster") == tmp_path
    assert instance.dagster_home(tmp_path, "local") == tmp_path  # a local run may use Postgres


@pytest.mark.parametrize(
    "url, expected",
    [("postgresql+psycopg://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
     ("postgresql://u@h/db?sslmode=require", "postgresql+psycopg2://u@h/db?sslmode=require"),
     ("postgres://u@h/db", "postgresql+psycopg2://u@h/db")],
)  # fmt: skip
def test_dagster_gets_the_settings_url_with_the_psycopg2_driver(url, expected):
    from orchestration.instance import dagster_postgres_url

    assert dagster_postgres_url(url) == expected


def test_a_url_that_is_not_postgres_is_refused():
    from orchestration.instance import dagster_postgres_url

    with pytest.raises(ValueError, match="is not a postgresql:// URL"):
        dagster_postgres_url("sqlite:///x.db")
