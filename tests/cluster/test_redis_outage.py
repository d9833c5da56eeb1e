"""Redis dies under a serving process and comes back: requests get a 503 naming the online
store (never a 500, never a hang) while it is down, and the same answers as before once it
is back, without restarting the server.

The whole graph runs on a small synthetic dataset under the cluster profile, with the
online store on a private ``redis-server`` this test starts (the shared one is untouched);
the registry is a fresh Postgres database (``postgres_url``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster.conftest import unavailable
from tests.serving.conftest import free_port, materialize_pipeline, start_server, stop_server

pytestmark = pytest.mark.cluster


class PrivateRedis:
    """A ``redis-server`` on a free loopback port, its snapshot in ``folder``."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server", FileNotFoundError("not installed"))
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
             str(self.folder), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, after a snapshot (``SAVE``) that the next start loads."""
        import redis

        redis.Redis(port=self.port, socket_timeout=5).save()
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_redis_outage_gives_503_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_redis: PrivateRedis,
    postgres_url: str,
) -> None:  # fmt: skip
    env = {"RECSYS_PROFILE": "cluster", "RECSYS_REDIS_URL": private_redis.url,
           "RECSYS_POSTGRES_URL": postgres_url,
           "RECSYS_SERVING_ONLINE_TIMEOUT_SECONDS": "0.5"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = tmp_path / "data"
    result = materialize_pipeline(data, synthetic_interactions=3_000, max_epochs=1)
    assert result.success
    users = pd.read_parquet(data / "dataset" / "interactions.parquet").user_id.unique()[:5]
    server = start_server(data, tmp_path / "server.log", env=env)
    try:
        before = {int(u): server.get(f"/recommendations/{u}") for u in users}
        assert all(status == 200 for status, _ in before.values()), before

        private_redis.kill()
        for user in users:
            started = time.monotonic()
            status, body = server.get(f"/recommendations/{user}")
            assert status == 503, (status, body)
            assert body["detail"].startswith(
                f"online store unavailable (redis at 127.0.0.1:{private_redis.port} db 0)"
            ), body
            # Connection refused fails at once; the timeout bounds anything slower.
            assert time.monotonic() - started < 10
            status, body = server.get(f"/candidates/{user}")
            assert status == 503 and "online store unavailable" in body["detail"], body

        private_redis.start()
        after = {int(u): server.get(f"/recommendations/{u}") for u in users}
        assert after == before
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        stop_server(server)
