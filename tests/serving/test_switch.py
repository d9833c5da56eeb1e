"""Version switches under load: 8 threads send requests while the pipeline promotes a second
version and then the first is rolled back to; no request fails, and every response is
exactly what one version (the one it names) answers, never a mix. Also: candidates of a
version the server does not serve are recomputed, not passed off as its own."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.parquet as pq

from recsys.registry import ModelRegistry
from tests.serving.conftest import Pipeline, Server, materialize_pipeline

THREADS = 8


def stored_candidates(pipeline: Pipeline, version: str) -> dict[int, list[int]]:
    path = pipeline.data / "models" / "versions" / version / "candidates.parquet"
    table = pq.read_table(path).to_pydict()
    return dict(zip(table["user_id"], table["candidate_item_ids"], strict=True))


def push_candidates(pipeline: Pipeline, version: str) -> None:
    """What the promotion asset does before switching current.json: the version's
    candidates into the online store."""
    from recsys.settings import Settings
    from recsys.store import feature_store_for
    from towers import candidates

    table = pq.read_table(pipeline.data / "models" / "versions" / version / "candidates.parquet")
    candidates.write_table(table, pipeline.data / "candidates" / "user_candidates.parquet")
    candidates.push_online(feature_store_for(Settings(data_dir=pipeline.data)), table)


def wait_for_version(server: Server, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.get("/readyz")[1].get("model_version") != version:
        assert time.monotonic() < deadline, server.get("/readyz")
        time.sleep(0.05)


Request = tuple[str, str, str | None]  # method, path, JSON body


def answer(conn: http.client.HTTPConnection, request: Request) -> tuple[int, dict[str, Any]]:
    method, path, body = request
    headers = {"content-type": "application/json"} if body else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def key(body: dict[str, Any]) -> tuple[str, tuple[int, ...], tuple[float, ...]]:
    """A response's version, item ids and scores (rounded: a float printed twice is equal)."""
    items = body["items"]
    return (
        body["model_version"],
        tuple(i["item_id"] for i in items),
        tuple(round(i["score"], 5) for i in items),
    )


def snapshot(server: Server, requests: list[Request]) -> dict[Request, Any]:
    conn = http.client.HTTPConnection(*server.base, timeout=30)
    try:
        out = {}
        for request in requests:
            status, body = answer(conn, request)
            assert status == 200, (request, body)
            out[request] = key(body)
        return out
    finally:
        conn.close()


Response = tuple[Request, int, Any]  # request, status (-1: connection error), key or error


@contextmanager
def under_load(
    bases: list[tuple[str, int]], requests: list[Request], threads: int = THREADS
) -> Iterator[list[list[Response]]]:
    """``threads`` threads send ``requests`` in turn, thread t to ``bases[t % len(bases)]``
    on one kept-alive connection, until the block ends; yields each thread's responses."""
    stop = threading.Event()
    seen: list[list[Response]] = [[] for _ in range(threads)]

    def hammer(thread: int) -> None:
        base = bases[thread % len(bases)]
        conn = http.client.HTTPConnection(*base, timeout=30)
        n = thread
        try:
            while not stop.is_set():
                request = requests[n % len(requests)]
                n += 1
                try:
                    status, body = answer(conn, request)
                    seen[thread].append((request, status, key(body) if status == 200 else body))
                except (OSError, http.client.HTTPException) as exc:
                    seen[thread].append((request, -1, repr(exc)))
                    conn.close()
                    conn = http.client.HTTPConnection(*base, timeout=30)
        finally:
            conn.close()

    workers = [threading.Thread(target=hammer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield seen
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)


def each_from_one_version(
    seen: list[list[Response]], expected: dict[str, dict[Request, Any]]
) -> list[Response]:
    """Every response of ``seen``, checked: no error, and each exactly what the version it
    names answers (``expected[version][request]``), never a mix of two; the two versions
    answer most requests differently, so a mix could not pass unnoticed."""
    responses = [r for thread in seen for r in thread]
    errors = [r for r in responses if r[1] != 200]
    assert errors == [], errors[:5]
    first, second = expected
    requests = list(expected[first])
    differ = sum(expected[first][r] != expected[second][r] for r in requests)
    assert differ >= len(requests) // 2, "the two versions should answer differently"
    for request, _, got in responses:
        version = got[0]
        assert version in expected, got
        assert got == expected[version][request], (request, got, expected[version][request])
    return responses


def test_candidates_of_another_version_are_recomputed_with_the_served_one(
    server: Server, pipeline: Pipeline, second_version: str
) -> None:
    first, second = pipeline.version, second_version
    user = next(iter(stored_candidates(pipeline, first)))
    push_candidates(pipeline, second)  # online rows of a version not (yet) served
    try:
        status, body = server.get(f"/candidates/{user}")
        assert status == 200, body
        assert body["source"] == "recomputed"
        assert body["stored_version"] == second and body["model_version"] == first
        ids = [i["item_id"] for i in body["items"]]
        expected = server.get(f"/recommendations/{user}?k=100")[1]["items"]
        assert ids == [i["item_id"] for i in expected]
        assert set(ids) != set(stored_candidates(pipeline, second)[user])
    finally:
        push_candidates(pipeline, first)
    status, body = server.get(f"/candidates/{user}")
    assert body["source"] == "online_store" and body["stored_version"] == first


def test_switch_and_rollback_under_concurrent_requests(
    server: Server, pipeline: Pipeline, second_version: str
) -> None:
    first, second = pipeline.version, second_version
    registry = ModelRegistry(pipeline.data / "models")
    users = list(stored_candidates(pipeline, first))[:24]
    recent = [{"item_id": 1, "rating": 4.0}, {"item_id": 2}, {"item_id": 3}]
    cold = json.dumps({"age": 40, "gender": "M", "recent": recent, "k": 10})
    requests: list[Request] = [("GET", f"/recommendations/{u}?k=10", None) for u in users]
    requests.append(("POST", "/recommendations", cold))
    expected = {first: snapshot(server, requests)}

    with under_load([server.base], requests) as seen:
        time.sleep(0.5)
        # The pipeline's promotion: candidates online, then current.json switched.
        builder = registry.record(second)["run_id"]  # type: ignore[index]
        result = materialize_pipeline(pipeline.data, ["promoted_model"], builder)
        assert result.success and registry.current() == second
        wait_for_version(server, second)
        expected[second] = snapshot(server, requests)
        time.sleep(0.5)
        # A rollback: the retired first version made current again.
        push_candidates(pipeline, first)
        registry.rollback(first, "test", reason="the second version answers badly")
        wait_for_version(server, first)
        time.sleep(0.5)

    responses = each_from_one_version(seen, expected)
    assert snapshot(server, requests) == expected[first]  # the rollback answers as before
    # Each thread saw first, then second, then first again: the swap is one-way each time.
    for thread in seen:
        versions = [got[0] for _, _, got in thread]
        changes = sum(a != b for a, b in zip(versions, versions[1:], strict=False))
        assert changes <= 2 and versions[0] == versions[-1] == first, versions
    assert sum(got[0] == second for _, _, got in responses) > THREADS
    status, metrics = server.get("/metrics")
    assert f'recsys_serving_model_info{{version="{first}"}} 1.0' in metrics.splitlines()
    assert f'version="{second}"' not in metrics
    print(f"{len(responses)} responses during two switches, "
          f"{sum(got[0] == second for _, _, got in responses)} from the second version")  # fmt: skip


def test_a_server_started_before_the_first_promotion_waits_for_it(
    server: Server, pipeline: Pipeline
) -> None:
    """The session's server was started before the pipeline's promotion step (conftest)."""
    before = pipeline.before_promotion
    status, body = before["GET /readyz"]
    assert status == 503 and "no model version" in body["reason"]
    for request in ("GET /recommendations", "GET /candidates", "POST /recommendations"):
        status, body = before[request]
        assert status == 503 and "no model version loaded" in body["detail"], (request, body)
    status, body = server.get("/readyz")  # the watcher loaded the promoted version
    assert status == 200 and body["model_version"] == pipeline.version
