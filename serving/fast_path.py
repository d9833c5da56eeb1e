"""``GET /recommendations/{user_id}`` answered without FastAPI's request machinery, when it
is plainly valid (``KnownUserFastPath``; ``serving.app`` installs it when ``fast_path``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pydantic_core

from serving.loaded import MAX_K
from serving.schemas import DEFAULT_K, INT64_MAX, INT64_MIN


class KnownUserFastPath:
    """``GET /recommendations/{user_id}`` answered without FastAPI's request machinery,
    when the request is plainly valid and the answer is a 200; anything else goes on to the
    FastAPI route, which answers it (422, 404, 503...) as documented.

    Per request, FastAPI's parameter validation, response validation and serialisation,
    routing and request objects cost about as much CPU as the route's own work (a feature
    lookup, the user tower and a search) on this project's 2-core machine. This path parses
    the two parameters strictly (a decimal int64 id; no query string or exactly
    ``k=<1..100>``), calls the same ``answer`` as the route and writes the same JSON with
    pydantic's serialiser. It sits inside the metrics and body-limit middlewares and tags
    the request with the route, so metrics are the same. Any exception or non-200 outcome
    falls through to the route, which recomputes it: a client error costs twice, a 200
    once. ``tests/serving/test_app.py`` checks that both paths give the same status and
    body for valid, invalid and unknown requests. With it (and the user tower in ONNX
    Runtime) one worker went from 596 to 766 requests/s closed loop on MovieLens-100K
    (``benchmarks/bench_serving.py``, the previous commit's and this one's minutes apart;
    the README has the figures).
    """

    PREFIX = "/recommendations/"
    ID = re.compile(r"-?[0-9]{1,19}")
    K = re.compile(rb"k=([0-9]{1,3})")

    def __init__(
        self, app: Any, answer: Callable[[int, int], dict[str, Any] | None], route: Any
    ) -> None:
        self.app = app
        self.answer = answer
        self.route = route

    def _body(self, scope: dict[str, Any]) -> bytes | None:
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(self.PREFIX):
            return None
        raw = path[len(self.PREFIX) :]
        if not self.ID.fullmatch(raw):
            return None
        user_id = int(raw)
        query: bytes = scope.get("query_string", b"")
        k = DEFAULT_K
        if query:
            match = self.K.fullmatch(query)
            if match is None:
                return None
            k = int(match.group(1))
        if not (INT64_MIN <= user_id <= INT64_MAX and 1 <= k <= MAX_K):
            return None
        for name, value in scope.get("headers", ()):
            if name in (b"content-length", b"transfer-encoding") and value != b"0":
                return None  # a GET with a body: the route's rules apply
        try:
            result = self.answer(user_id, k)
            if result is None:
                return None
            # pydantic's own JSON serialiser, as the route's response model uses it.
            return bytes(pydantic_core.to_json(result, inf_nan_mode="null"))
        except Exception:  # the route answers (and logs) whatever went wrong
            return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = self._body(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the metrics' endpoint label, as the router sets it
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
