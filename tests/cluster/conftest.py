"""Fixtures of the cluster profile's tests (marked ``cluster``): Redis and Postgres URLs, each
test with a namespace of its own.

The services are the ones ``.ci/services start`` runs (or those ``RECSYS_REDIS_URL`` and
``RECSYS_POSTGRES_URL`` name). Outside CI a missing service skips the test with the reason;
under ``CI=true`` it fails it, so that CI never passes by skipping.

* ``redis_url``: one Redis database number per pytest process (1-15, reserved with a lock
  file, so concurrent runs on one server never share one), flushed before each test.
* ``postgres_url``: a fresh database per test, dropped after it.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from recsys.settings import Settings


def unavailable(what: str, exc: Exception) -> None:
    """Skip the test outside CI, fail it under ``CI=true``: a service it needs is missing."""
    reason = f"{what} not reachable ({type(exc).__name__}: {exc}); run .ci/services start"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _with_db(url: str, db: int | str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def _redis_db() -> Iterator[tuple[str, int]]:
    """(server URL, database number) reserved for this process."""
    base = Settings().redis_url
    for db in range(1, 16):
        lock: IO[Any] = open(f"/tmp/recsys-test-redis-{db}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        try:
            yield base, db
        finally:
            lock.close()
        return
    pytest.fail("Redis databases 1-15 are all held by other test processes")


@pytest.fixture
def redis_url(_redis_db: tuple[str, int]) -> Iterator[str]:
    """A Redis URL whose database is empty at the start of the test."""
    import redis

    base, db = _redis_db
    url = _with_db(base, db)
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        client.flushdb()
    except redis.RedisError as exc:
        unavailable(f"Redis at {base}", exc)
    yield url
    try:
        client.flushdb()
    finally:
        client.close()


def _psycopg_url(url: str) -> str:
    """The SQLAlchemy URL without its driver suffix, as psycopg takes it."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An SQLAlchemy URL of a database created for this test (dropped after it)."""
    import psycopg

    base = Settings().postgres_url
    name = f"recsys_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(_psycopg_url(base), autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {base}", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_db(base, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cluster_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, postgres_url: str
) -> dict[str, str]:
    """``RECSYS_*`` variables selecting the cluster profile on this test's namespaces (what
    a subprocess or ``Settings()`` without arguments then reads)."""
    env = {
        "RECSYS_PROFILE": "cluster",
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_POSTGRES_URL": postgres_url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
