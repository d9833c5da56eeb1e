"""The HTTP API against a real server (``python -m serving`` on a loopback port) over a data
folder the Dagster graph built: known and cold users, exclusions, errors, candidates,
health, readiness and metrics."""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.serving.conftest import Pipeline, Server, start_server, stop_server

UNKNOWN = 987_654_321


def seen_before_as_of(pipeline: Pipeline) -> dict[int, set[int]]:
    manifest = json.loads((pipeline.data / "features" / "manifest.json").read_text())
    events = pipeline.interactions()
    before = events[events.event_timestamp < pd.Timestamp(manifest["as_of"])]
    return {int(u): set(g.item_id.tolist()) for u, g in before.groupby("user_id")}


@pytest.fixture(scope="module")
def seen(pipeline: Pipeline) -> dict[int, set[int]]:
    return seen_before_as_of(pipeline)


@pytest.fixture(scope="module")
def stored_candidates(pipeline: Pipeline) -> dict[int, tuple[list[int], list[float]]]:
    path = pipeline.data / "models" / "versions" / pipeline.version / "candidates.parquet"
    table = pq.read_table(path).to_pydict()
    return {
        u: (ids, scores)
        for u, ids, scores in zip(
            table["user_id"], table["candidate_item_ids"], table["candidate_scores"], strict=True
        )
    }


def test_known_user_gets_ranked_unseen_items_of_the_current_version(
    server: Server, pipeline: Pipeline, seen: dict[int, set[int]], stored_candidates: dict
) -> None:
    titles = dict(zip(pipeline.items().item_id, pipeline.items().title, strict=True))
    years = dict(zip(pipeline.items().item_id, pipeline.items().release_year, strict=True))
    heavy = sorted(seen, key=lambda u: -len(seen[u]))[:5]  # most items to exclude
    for user in [*heavy, *list(seen)[:15]]:
        status, body = server.get(f"/recommendations/{user}?k=20")
        assert status == 200, body
        assert body["user_id"] == user and body["model_version"] == pipeline.version
        items = body["items"]
        ids = [i["item_id"] for i in items]
        scores = [i["score"] for i in items]
        assert len(ids) == 20 == len(set(ids)) and body["k"] == 20
        assert not set(ids) & seen[user], "an already-seen item was recommended"
        assert body["excluded"] >= len(seen[user])
        assert scores == sorted(scores, reverse=True)
        assert all(i["title"] == titles[i["item_id"]] for i in items)
        # A nullable int attribute stays an int (not 1977.0), or null.
        for i in items:
            want = years[i["item_id"]]
            got = i["release_year"]
            assert (got is None and pd.isna(want)) or (type(got) is int and got == want), i
        # The pipeline's offline top-100 of the same version (batch forward pass, same
        # exclusions) is an independent oracle of the online path.
        want_ids, want_scores = stored_candidates[user]
        np.testing.assert_allclose(scores, want_scores[:20], rtol=1e-4, atol=1e-4)
        assert ids == want_ids[:20] or set(ids) == set(want_ids[:20])


def test_k_bounds_the_list(server: Server, seen: dict[int, set[int]]) -> None:
    user = next(iter(seen))
    for k in (1, 7, 100):
        status, body = server.get(f"/recommendations/{user}?k={k}")
        assert status == 200 and len(body["items"]) == k
    assert len(server.get(f"/recommendations/{user}")[1]["items"]) == 20  # the default


def test_no_user_is_recommended_an_item_already_seen(
    server: Server, seen: dict[int, set[int]]
) -> None:
    for user in list(seen)[::5]:
        status, body = server.get(f"/recommendations/{user}?k=100")
        assert status == 200
        assert not {i["item_id"] for i in body["items"]} & seen[user], user


def test_unknown_user_is_404_with_a_clear_message(server: Server) -> None:
    for path in (f"/recommendations/{UNKNOWN}", f"/candidates/{UNKNOWN}", "/recommendations/-3"):
        status, body = server.get(path)
        assert status == 404, (path, body)
    assert "unknown" in server.get(f"/recommendations/{UNKNOWN}")[1]["detail"]
    assert "POST /recommendations" in server.get(f"/recommendations/{UNKNOWN}")[1]["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/recommendations/1?k=0",
        "/recommendations/1?k=101",
        "/recommendations/1?k=-1",
        "/recommendations/1?k=abc",
        "/recommendations/1?k=2.5",
        "/recommendations/1?k=",
        "/recommendations/abc",
        "/recommendations/1.5",
        "/recommendations/9223372036854775808",  # past int64
        "/recommendations/%F0%9F%98%80",
        "/candidates/xyz",
    ],
)
def test_invalid_path_or_query_is_422(server: Server, path: str) -> None:
    status, body = server.get(path)
    assert status == 422, body
    assert "detail" in body and "input" not in body["detail"][0]  # inputs are not echoed


def recent(*ids: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"item_id": i, **fields} for i in ids]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("not json", {"content-type": "application/json"}),
        ('{"age": 30', {"content-type": "application/json"}),
        ("null", {"content-type": "application/json"}),
        ("[1, 2]", {"content-type": "application/json"}),
        ('{"age": 30}', {"content-type": "text/plain"}),
        ({"age": "30"}, None),
        ({"age": 30.5}, None),
        ({"age": -1}, None),
        ({"age": True}, None),
        ({"gender": 1}, None),
        ({"zip_code": ["1"]}, None),
        ({"recent": "1,2"}, None),
        ({"recent": [1, 2]}, None),  # objects, not bare ids
        ({"recent": [{"item_id": 1}, None]}, None),
        ({"recent": [{"item_id": "2"}]}, None),
        ({"recent": [{"item_id": 1.5}]}, None),
        ({"recent": [{"item_id": 2**63}]}, None),
        ({"recent": [{"rating": 4.0}]}, None),  # item_id is required
        ({"recent": [{"item_id": 1, "seen": True}]}, None),
        ({"recent": recent(*range(1001))}, None),
        ({"recent": recent(1, rating="4")}, None),
        ({"recent": recent(1, rating=5.5)}, None),
        ({"recent": recent(1, rating=0)}, None),
        ({"recent": recent(1, timestamp=1714560000)}, None),  # not a string
        ({"recent": recent(1, timestamp="2024-05-01T12:00:00")}, None),  # no offset
        ({"recent": recent(1, timestamp="2024-05-01")}, None),
        ({"recent": recent(1, timestamp="2023-02-29T12:00:00Z")}, None),
        ({"recent": recent(1, timestamp="2024-05-01T12:00:00+24:00")}, None),
        ({"recent": recent(1, timestamp="2024-05-01T12:00:00Z\n")}, None),
        ({"recent": recent(1, timestamp="٢٠٢٤-05-01T12:00:00Z")}, None),  # ASCII digits only
        ({"recent_item_ids": [1, 2]}, None),  # the previous body's field
        ({"k": 0}, None),
        ({"k": 101}, None),
        ({"k": "5"}, None),
        ({"unknown_field": 1}, None),
    ],
)
def test_malformed_body_is_422(server: Server, body: object, headers: dict | None) -> None:
    status, answer = server.post("/recommendations", body, headers)
    assert status == 422, answer


@pytest.mark.parametrize(
    "raw",
    [
        b'{"age": 30',
        b"\xff\xfe{",
        b'{"gender": "\xe9"}',
        b'{"recent": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    ],
    ids=["syntax", "not utf-8", "latin-1 string", "nested too deep"],
)
def test_malformed_json_is_one_documented_422(server: Server, raw: bytes) -> None:
    """JSON that does not parse, whatever the reason, is the same 422 (not FastAPI's bare
    400 for bytes that are not UTF-8 or nesting deeper than the parser goes)."""
    status, answer = server.post("/recommendations", raw, {"content-type": "application/json"})
    assert status == 422, answer
    assert [e["type"] for e in answer["detail"]] == ["json_invalid"]


def test_json_integers_may_have_a_zero_fraction(server: Server, pipeline: Pipeline) -> None:
    """JSON Schema's integer is a number without a fractional part: 10.0 is one."""
    item = int(pipeline.items().item_id.iloc[0])
    whole = server.post("/recommendations", {"age": 30, "k": 10, "recent": recent(item)})
    zero_fraction = {"age": 30.0, "k": 10.0, "recent": recent(float(item))}
    assert server.post("/recommendations", zero_fraction) == whole
    assert whole[0] == 200


def test_oversized_body_is_413(server: Server) -> None:
    big = 300_000  # over the default max_body_bytes (256 KiB)
    status, _ = server.post("/recommendations", "x" * big, {"content-type": "application/json"})
    assert status == 413
    # Without a Content-Length (chunked upload): counted as it arrives.
    conn = http.client.HTTPConnection(*server.base, timeout=30)
    try:
        chunks = iter([b'{"zip_code": "' + b"9" * (big // 2), b"9" * (big // 2) + b'"}'])
        conn.request("POST", "/recommendations", body=chunks, encode_chunked=True,
                     headers={"content-type": "application/json"})  # fmt: skip
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert server.post("/recommendations", {"age": 30})[0] == 200  # the server is fine


def test_the_largest_valid_body_is_accepted(server: Server) -> None:
    """Every field at its longest (1,000 interactions with int64 ids, ratings and times,
    strings as \\u escapes), indented: under the body limit, so answered, not a 413."""
    interaction = {"item_id": -(2**63), "rating": 1.0000000000000002,
                   "timestamp": "2024-05-01T12:30:00.123456+05:30"}  # fmt: skip
    body = {"age": 150, "gender": "\x00" * 64, "occupation": "\x00" * 128,
            "zip_code": "\x00" * 32, "recent": [interaction] * 1000, "k": 100}  # fmt: skip
    text = json.dumps(body, indent=2)
    assert len(text) > 140_000
    status, answer = server.post("/recommendations", text, {"content-type": "application/json"})
    assert status == 200, answer
    assert answer["excluded"] == 1 and len(answer["items"]) == 100


def test_cold_start_user_is_deterministic_and_excludes_the_given_items(
    server: Server, pipeline: Pipeline
) -> None:
    items = pipeline.items().item_id.head(5).tolist()
    body = {"age": 31, "gender": "F", "occupation": "engineer", "zip_code": "94110",
            "recent": recent(*items), "k": 15}  # fmt: skip
    status, first = server.post("/recommendations", body)
    assert status == 200, first
    assert first["user_id"] is None and first["model_version"] == pipeline.version
    ids = [i["item_id"] for i in first["items"]]
    assert len(ids) == 15 == len(set(ids)) and not set(ids) & set(items)
    assert first["excluded"] == 5
    assert server.post("/recommendations", body)[1] == first  # same request, same answer
    # Only what the body says: no profile at all is a valid (if vague) request...
    status, empty = server.post("/recommendations", {})
    assert status == 200 and len(empty["items"]) == 20
    # ...and the profile and history do change the answer.
    other = {**body, "age": 60, "gender": "M", "recent": recent(*items[::-1][:2])}
    assert server.post("/recommendations", other)[1]["items"] != first["items"]
    # Explicit nulls are missing values; unknown item ids are out-of-vocabulary history.
    nulls = {"age": None, "gender": None, "occupation": None, "zip_code": None,
             "recent": [{"item_id": UNKNOWN, "rating": None, "timestamp": None},
                        {"item_id": -1}]}  # fmt: skip
    assert server.post("/recommendations", nulls)[0] == 200
    assert server.post("/recommendations", {"recent": None})[0] == 200


def test_cold_start_interactions_are_ordered_by_their_times(
    server: Server, pipeline: Pipeline
) -> None:
    """Only the newest interactions (the feature build's history length) enter the user's
    history: given with times, in any order, the times decide which (and how long ago each
    was); the ratings give the mean-rating feature, and every item given is excluded."""
    items = pipeline.items().item_id.tolist()[:60]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    # Newest first, as a client without times sends them.
    newest_first = [{"item_id": item, "rating": 1.0 + n % 5} for n, item in enumerate(items)]
    with_times = [
        {**given, "timestamp": (start - timedelta(hours=n)).isoformat()}
        for n, given in enumerate(newest_first)
    ]
    want = server.post("/recommendations", {"age": 40, "recent": with_times, "k": 30})
    assert want[0] == 200 and want[1]["excluded"] == 60
    shuffled = with_times[::-1][30:] + with_times[::-1][:30]
    assert server.post("/recommendations", {"age": 40, "recent": shuffled, "k": 30}) == want
    # The same list given oldest first without times is another history.
    untimed = server.post("/recommendations", {"age": 40, "recent": newest_first, "k": 30})
    oldest_first = {"age": 40, "recent": newest_first[::-1], "k": 30}
    assert server.post("/recommendations", oldest_first)[1]["items"] != untimed[1]["items"]
    # Without times every item is happening now: not the history of two years ago.
    assert [i["score"] for i in untimed[1]["items"]] != [i["score"] for i in want[1]["items"]]
    unrated = [{"item_id": i["item_id"]} for i in newest_first]
    assert server.post("/recommendations", {"age": 40, "recent": unrated, "k": 30}) != untimed


def test_candidates_come_from_the_online_store_of_the_served_version(
    server: Server, pipeline: Pipeline, stored_candidates: dict
) -> None:
    for user in list(stored_candidates)[:10]:
        status, body = server.get(f"/candidates/{user}")
        assert status == 200, body
        assert body["source"] == "online_store"
        assert body["model_version"] == body["stored_version"] == pipeline.version
        want_ids, want_scores = stored_candidates[user]
        assert [i["item_id"] for i in body["items"]] == want_ids
        np.testing.assert_allclose([i["score"] for i in body["items"]], want_scores, rtol=1e-6)
        assert all(i["title"] for i in body["items"])


def test_health_readiness_docs_and_metrics(server: Server, pipeline: Pipeline) -> None:
    assert server.get("/healthz") == (200, {"status": "ok"})
    status, ready = server.get("/readyz")
    assert status == 200 and ready["ready"] is True
    assert ready["model_version"] == ready["current"] == pipeline.version
    assert server.get("/docs")[0] == 200
    paths = server.get("/openapi.json")[1]["paths"]
    assert {"/recommendations/{user_id}", "/recommendations", "/candidates/{user_id}"} <= set(paths)
    # One request of each status the assertions below look for (not left to other tests).
    assert server.get(f"/recommendations/{pipeline.interactions().user_id.iloc[0]}")[0] == 200
    server.get(f"/recommendations/{UNKNOWN}")
    server.get("/no/such/path/123")
    status, text = server.get("/metrics")
    assert status == 200
    lines = text.splitlines()

    def has(prefix: str) -> bool:
        return any(line.startswith(prefix) for line in lines)

    assert has('recsys_serving_requests_total{endpoint="/recommendations/{user_id}",'
               'method="GET",status="200"}')  # fmt: skip
    assert has('recsys_serving_requests_total{endpoint="/recommendations/{user_id}",'
               'method="GET",status="404"}')  # fmt: skip
    assert has('recsys_serving_requests_total{endpoint="unmatched",method="GET",status="404"}')
    assert has('recsys_serving_request_duration_seconds_bucket{endpoint="/readyz",le="0.01"}')
    assert f'recsys_serving_model_info{{version="{pipeline.version}"}} 1.0' in lines
    assert not any("/no/such/path" in line for line in lines)  # raw paths are not labels


def test_two_worker_processes_answer_like_one(
    server: Server, pipeline: Pipeline, tmp_path: Path
) -> None:
    """``python -m serving --workers 2``: two processes behind one port, the same answers
    (and 404s) as the one-process server, whichever worker takes the request."""
    two = start_server(pipeline.data, tmp_path / "two-workers.log", workers=2)
    try:
        users = pipeline.interactions().user_id.drop_duplicates().head(30).tolist()
        for user in [*users, 10**12]:
            path = f"/recommendations/{user}?k=10"
            assert two.get(path) == server.get(path), user
        assert two.post("/recommendations", {"age": 30}) == server.post(
            "/recommendations", {"age": 30}
        )
    finally:
        stop_server(two)


def test_fast_path_answers_like_the_fastapi_route(
    server: Server, pipeline: Pipeline, tmp_path: Path
) -> None:
    """The known-user fast path (on by default) gives the FastAPI route's status and body
    for valid requests, and leaves every other request to the route (same 404s, 422s)."""
    route_only = start_server(pipeline.data, tmp_path / "route-only.log",
                              env={"RECSYS_SERVING_FAST_PATH": "false"})  # fmt: skip
    try:
        users = pipeline.interactions().user_id.drop_duplicates().head(12).tolist()
        paths = [f"/recommendations/{u}{q}" for u in users
                 for q in ("", "?k=1", "?k=7", "?k=100")]  # fmt: skip
        odd = ["?k=0", "?k=101", "?k=abc", "?k=05", "?k=+5", "?k=5&k=6", "?k=5&x=1", "?K=5",
               "?k=", "?k=1000", "?k=%35"]  # fmt: skip
        paths += [f"/recommendations/{users[0]}{q}" for q in odd]
        ids = [str(UNKNOWN), "-1", "-0", "007", "abc", "1.5", "1e3", str(2**63), str(-(2**63)),
               "%201", "+1", "0x10", "9" * 25, "", "1/2"]  # fmt: skip
        paths += [f"/recommendations/{i}" for i in ids]
        for path in paths:
            assert server.get(path) == route_only.get(path), path
    finally:
        stop_server(route_only)


def test_fast_path_takes_only_plainly_valid_requests() -> None:
    """Which requests the fast path answers itself (the rest go to the route)."""
    from serving.fast_path import KnownUserFastPath

    asked: list[tuple[int, int]] = []

    def answer(user_id: int, k: int) -> dict[str, Any] | None:
        asked.append((user_id, k))
        return None if user_id == 404 else {"user_id": user_id, "k": k, "score": float("nan")}

    fast = KnownUserFastPath(app=None, answer=answer, route=None)

    def body(path: str, query: bytes = b"", method: str = "GET", headers=()) -> bytes | None:
        scope = {"type": "http", "method": method, "path": path, "query_string": query,
                 "headers": list(headers)}  # fmt: skip
        return fast._body(scope)

    assert json.loads(body("/recommendations/42") or b"") == {"user_id": 42, "k": 20,
                                                                 "score": None}  # fmt: skip
    assert body("/recommendations/-7", b"k=100") is not None and asked[-1] == (-7, 100)
    assert body("/recommendations/007", b"k=05") is not None and asked[-1] == (7, 5)
    assert body(f"/recommendations/{2**63 - 1}") is not None
    asked.clear()
    for path, query in [("/recommendations/1", b"k=0"), ("/recommendations/1", b"k=101"),
                        ("/recommendations/1", b"k=5&k=6"), ("/recommendations/1", b"x=1"),
                        ("/recommendations/1.5", b""), ("/recommendations/+1", b""),
                        (f"/recommendations/{2**63}", b""), ("/recommendations/", b""),
                        ("/recommendations/1/2", b""), ("/candidates/1", b"")]:  # fmt: skip
        assert body(path, query) is None, (path, query)
    assert asked == []  # none of them reached the model
    assert body("/recommendations/1", method="POST") is None
    assert body("/recommendations/1", headers=[(b"content-length", b"3")]) is None
    assert body("/recommendations/404") is None and asked == [(404, 20)]  # the route answers
