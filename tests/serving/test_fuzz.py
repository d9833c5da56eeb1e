"""500 random and malformed requests (the generator of ``benchmarks/fuzz_serving.py``, which
sends 10,000) against the real server: no 5xx, no dropped connection, and the server still
answers correctly afterwards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.serving.conftest import Pipeline, Server

FUZZER = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_serving.py"


def test_random_and_malformed_requests_never_get_a_server_error(
    server: Server, pipeline: Pipeline
) -> None:
    spec = importlib.util.spec_from_file_location("fuzz_serving", FUZZER)
    assert spec is not None and spec.loader is not None
    fuzzer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzzer)
    users = pipeline.interactions().user_id.unique().tolist()
    items = pipeline.items().item_id.tolist()
    statuses, failures = fuzzer.fuzz(*server.base, 500, 1, users, items)
    assert failures == [], failures[:5]
    assert sum(statuses.values()) == 500
    assert {200, 404, 405, 413, 422} <= set(statuses), statuses  # it did reach every kind
    assert server.get(f"/recommendations/{users[0]}")[0] == 200
    assert server.get("/readyz")[0] == 200
