"""Fixtures of the artifact store tests: a real S3 server (``moto_server``, moto's HTTP
server in its own process) on a free loopback port for the session, and a fresh bucket per
test. Nothing in boto3 or LanceDB is patched: both talk HTTP to that server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.objectstore import ArtifactStore

# moto accepts any credentials; they reach boto3 and LanceDB through the standard variables.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto S3 server started for this session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).with_name("moto_server")
    with log.open("wb") as out:
        process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server not answering: " + log.read_text()
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials for moto in the environment, and no ~/.aws of the host's."""
    env = {**CREDENTIALS, "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return env


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server; returns its ``s3://bucket/prefix`` URL."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    store = ArtifactStore(f"s3://{bucket}", endpoint)
    store.client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/recsys"


@pytest.fixture
def store(s3_endpoint: str, aws_env: dict[str, str]) -> ArtifactStore:
    """An artifact store in a fresh bucket of the session's server."""
    return ArtifactStore(new_bucket(s3_endpoint), s3_endpoint)
