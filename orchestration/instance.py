"""The Dagster instance configuration (``$DAGSTER_HOME/dagster.yaml``) of each profile.

``local``: the repository's ``dagster.yaml`` as it is, SQLite storage under ``DAGSTER_HOME``.
``cluster``: the same file plus a ``storage: postgres:`` block (dagster-postgres: run
history, event logs and schedules in one Postgres database), so that ``recsys pipeline``,
``dagster-webserver`` and ``dagster-daemon`` on any host read and write one history. The
file names no password: the URL is the environment variable :data:`POSTGRES_URL_VARIABLE`,
which ``recsys pipeline`` sets from the settings' ``postgres_url`` (the README shows it for
the webserver and the daemon).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from recsys.settings import PROJECT_ROOT

POSTGRES_URL_VARIABLE = "RECSYS_DAGSTER_POSTGRES_URL"

CLUSTER_STORAGE = f"""
# Cluster profile (RECSYS_PROFILE=cluster): runs, event logs and schedules in Postgres
# (dagster-postgres), shared by every process and host that uses this configuration. The URL
# is read from the environment when the instance starts: {POSTGRES_URL_VARIABLE}, e.g.
# postgresql+psycopg2://recsys:recsys@127.0.0.1:5432/recsys (`recsys pipeline` sets it from
# RECSYS_POSTGRES_URL). The +psycopg2 matters: SQLAlchemy 2.1 gives a bare postgresql:// URL
# psycopg 3, on which dagster-postgres's event log fails (its NOTIFY takes a bound
# parameter). Steps' stdout/stderr stay on the host that ran them (DAGSTER_HOME).
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_URL_VARIABLE}
"""


def instance_yaml(profile: str) -> str:
    """The ``dagster.yaml`` text of ``profile``: the repository's file (queue, concurrency
    limit, telemetry off), plus Postgres storage under ``cluster``."""
    base = (PROJECT_ROOT / "dagster.yaml").read_text()
    return base + CLUSTER_STORAGE if profile == "cluster" else base


def dagster_postgres_url(url: str) -> str:
    """``url`` (an SQLAlchemy Postgres URL, any driver) with the psycopg2 driver, the one
    dagster-postgres is built on. Under psycopg 3, the default driver of a bare
    ``postgresql://`` in SQLAlchemy 2.1, its event log's ``NOTIFY run_events, :id`` is a
    syntax error (psycopg 3 binds parameters on the server, where NOTIFY takes none), and
    its retry of a concurrent table creation reads psycopg2's ``pgcode``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError(f"postgres_url {url!r} is not a postgresql:// URL")
    return f"postgresql+psycopg2://{rest}"


def storage_kind(config: dict[str, Any]) -> str:
    """Which storage a parsed ``dagster.yaml`` names: postgres, sqlite (also the default when
    it names none), or the module of a custom one."""
    storage = config.get("storage") or {}
    if "postgres" in storage:
        return "postgres"
    if not storage or "sqlite" in storage:
        return "sqlite"
    return str(storage.get("module", "custom"))


def check_profile(config_path: Path, profile: str) -> None:
    """Refuse an instance folder whose ``dagster.yaml`` (kept from an earlier run) stores
    runs in SQLite when the profile is ``cluster``: the run would be recorded where no other
    host sees it."""
    if profile != "cluster":
        return
    kind = storage_kind(yaml.safe_load(config_path.read_text()) or {})
    if kind != "postgres":
        raise SystemExit(
            f"{config_path}: its storage is {kind}, but the profile is cluster (Dagster "
            "storage in Postgres); delete this file (it is written again for the profile) or "
            "choose another instance folder (--dagster-home or DAGSTER_HOME)"
        )


def dagster_home(path: Path | None = None, profile: str = "local") -> Path:
    """The Dagster instance folder of ``recsys pipeline``: ``path``, else ``$DAGSTER_HOME``,
    else the project's ``dagster_home/``; created on first use with the ``dagster.yaml`` of
    ``profile`` (:func:`instance_yaml`: Postgres storage under ``cluster``; an existing
    file is kept, and refused under ``cluster`` if it stores runs in SQLite), so that
    ``dagster dev`` on the same ``DAGSTER_HOME`` shows the runs of this command."""
    from recsys.io import atomic_write_bytes

    env = os.environ.get("DAGSTER_HOME")
    home = (path or (Path(env) if env else PROJECT_ROOT / "dagster_home")).expanduser()
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        atomic_write_bytes(config, instance_yaml(profile).encode())
    _refuse_relative_storage(config)
    check_profile(config, profile)
    return home


def _refuse_relative_storage(config: Path) -> None:
    """Dagster resolves a relative storage or compute-log ``base_dir`` against the working
    directory, so the run history would land wherever the command is run from."""
    import yaml

    settings = yaml.safe_load(config.read_text()) or {}
    fields = {
        "storage.sqlite.base_dir": (settings.get("storage") or {}).get("sqlite") or {},
        "compute_logs.config.base_dir": (settings.get("compute_logs") or {}).get("config") or {},
    }
    for field, section in fields.items():
        value = section.get("base_dir") if isinstance(section, dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            raise SystemExit(
                f"{config}: {field} is the relative path {value!r}, which Dagster resolves "
                "against the working directory; delete the key (storage then stays under "
                "DAGSTER_HOME) or make the path absolute"
            )
