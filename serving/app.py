"""The online recommendations API (FastAPI): ``create_app(settings)``.

Endpoints (OpenAPI docs at ``/docs``):

* ``GET /recommendations/{user_id}?k=20``: the user's online features (Feast service
  ``user_tower_serving_v1``) → user tower → top-k in the version's item table, every item
  the user interacted with before ``as_of`` removed.
* ``POST /recommendations``: a user the store does not know (cold start): profile features
  and optional recent items in the body, turned into the same feature columns in Python
  (``serving.features``).
* ``GET /candidates/{user_id}``: the top-100 precomputed by the pipeline (Feast service
  ``user_candidates_v1``). Each stored row names the version that computed it; a row of
  another version than the one served (during a promotion the online store is updated
  before ``current.json``) is not passed off as this version's: the candidates are then
  recomputed with the served version, and the response says so (``source: recomputed``).
* ``/healthz`` (the process answers), ``/readyz`` (a consistent version is served,
  ``serving.state.ServingState.readiness``), ``/metrics`` (Prometheus text).

Handlers are ``async`` and do their few milliseconds of work inline on the event loop
rather than in a thread pool: the work holds the GIL anyway, so threads would add a hop
(and contention) without adding parallelism, and it keeps Feast's single SQLite connection
to one thread. Scale out with processes (one uvicorn worker each).

A plainly valid ``GET /recommendations/{user_id}`` is answered by ``KnownUserFastPath``
(the same answer without FastAPI's per-request machinery); everything else by the routes.

Client errors are 4xx, never 5xx: invalid ids, ``k`` or bodies are 422 (FastAPI
validation), unknown users 404, bodies over ``max_body_bytes`` 413. 503 means the server
has no model version or Feast store to answer with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
import pydantic_core
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.middleware import Middleware

from serving.features import FEATURE_COLUMNS
from serving.loaded import MAX_K, MAX_RECENT_ITEMS, Loaded
from serving.metrics import Metrics, MetricsMiddleware
from serving.settings import ServingSettings
from serving.state import ServingState
from serving.threads import limit_threads

log = logging.getLogger(__name__)

USER_SERVICE = "user_tower_serving_v1"
KNOWN_USER_ROUTE = "/recommendations/{user_id}"
CANDIDATES_SERVICE = "user_candidates_v1"
DEFAULT_K = 20
# Candidates recomputed for a row of another version: as many as the pipeline stores.
CANDIDATES_K = 100
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

UserId = Annotated[
    int, Path(ge=INT64_MIN, le=INT64_MAX, description="The user's id (int64).", examples=[1])
]
ItemId = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
# The ratings the interactions validation accepts (recsys.validation: 1 to 5); strict
# floats take integers too (4 is a rating, "4" is not).
Rating = Annotated[float, Field(ge=1.0, le=5.0, allow_inf_nan=False)]


# --- request and response bodies -----------------------------------------------------------
class ColdStartRequest(BaseModel):
    """A user the feature store does not know: the profile, and what they interacted with
    so far (newest first). Types are strict: ``"30"`` is not an age."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "age": 31,
                    "gender": "F",
                    "occupation": "engineer",
                    "zip_code": "94110",
                    "recent_item_ids": [50, 181, 258],
                    "recent_ratings": [5.0, 4.0, None],
                    "k": 10,
                }
            ]
        },
    )

    age: int | None = Field(None, ge=0, le=150)
    gender: str | None = Field(None, max_length=64)
    occupation: str | None = Field(None, max_length=128)
    zip_code: str | None = Field(None, max_length=32)
    recent_item_ids: list[ItemId] | None = Field(
        None,
        max_length=MAX_RECENT_ITEMS,
        description="Items the user interacted with, newest first; never recommended back.",
    )
    recent_ratings: list[Rating | None] | None = Field(
        None,
        max_length=MAX_RECENT_ITEMS,
        description="The user's rating of each of recent_item_ids (same length, null for an "
        "unrated item); their mean is the user's mean rating feature.",
    )
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)

    @model_validator(mode="after")
    def _one_rating_per_item(self) -> ColdStartRequest:
        if self.recent_ratings is not None and len(self.recent_ratings) != len(
            self.recent_item_ids or []
        ):
            raise ValueError(
                f"recent_ratings has {len(self.recent_ratings)} entries for "
                f"{len(self.recent_item_ids or [])} recent_item_ids: give one per item"
            )
        return self


class Item(BaseModel):
    item_id: int
    score: float = Field(description="The model's score: dot product of the user and item "
                         "vectors (higher is better), comparable within one version.")  # fmt: skip
    title: str | None = None
    genres: list[str] | None = None
    release_year: int | None = None


class Recommendations(BaseModel):
    user_id: int | None = Field(description="None for a cold-start request.")
    model_version: str
    k: int
    excluded: int = Field(description="Already-seen items removed from the results.")
    items: list[Item]


class Candidates(BaseModel):
    user_id: int
    model_version: str = Field(description="The version these items are scored by.")
    stored_version: str = Field(description="The version of the row in the online store.")
    source: Literal["online_store", "recomputed"]
    items: list[Item]


class Problem(BaseModel):
    detail: str


class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes, before they are buffered: at once by
    Content-Length, else counted as the chunks arrive (chunked uploads). On overflow the 413
    is sent, the app is told the client left, and whatever it answers after is dropped."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large()(scope, receive, send)
                return
        received = 0
        rejected = False

        async def counted() -> dict[str, Any]:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                rejected = True
                await self._too_large()(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_rejected(message: dict[str, Any]) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, counted, unless_rejected)


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


def _plain(value: Any) -> int | str | bool:
    """A JSON-safe copy of a validation error's constraint value."""
    return value if isinstance(value, int | str | bool) else str(value)


# --- the app -------------------------------------------------------------------------------
def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """The API over ``settings.data_dir``; the model version is loaded in the lifespan
    (before the first request is accepted) and replaced by the watcher thread."""
    if settings is None:
        from_env: dict[str, Any] = {}
        settings = ServingSettings(**from_env)
    metrics = Metrics()
    state = ServingState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_threads(settings.compute_threads)
        state.open_store()
        state.refresh()  # the current version, loaded once before traffic
        state.start_watcher()
        try:
            yield
        finally:
            state.stop_watcher()

    app = FastAPI(
        title="recsys serving",
        version="1",
        summary="Two-tower recommendations from the current model version.",
        lifespan=lifespan,
    )
    app.state.serving = state
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each invalid input back: a 20,000-item list would come
        # back whole, and a NaN or 1e400 in the body (Python's json accepts both) made the
        # error response itself unserialisable, a 500. Type, location, message and the
        # constraint (as plain values) say enough.
        errors = [
            {
                "type": str(e.get("type")),
                "loc": [p if isinstance(p, int | str) else str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg")),
                **({"ctx": {k: _plain(v) for k, v in e["ctx"].items()}} if e.get("ctx") else {}),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    def served() -> Loaded:
        loaded = state.loaded  # read once: the whole request uses this version
        if loaded is None:
            error = state.failure.error if state.failure else "loading"
            raise HTTPException(503, f"no model version loaded ({error})")
        return loaded

    def online(service: str, user_id: int) -> dict[str, Any]:
        try:
            return state.online_row(service, user_id)
        except Exception as exc:  # the store, not the client: 503 and a log line
            log.exception("online lookup of user %d in %s", user_id, service)
            raise HTTPException(503, f"feature store unavailable: {type(exc).__name__}") from exc

    def for_user(loaded: Loaded, user_id: int, row: dict[str, Any], k: int) -> dict[str, Any]:
        """Top-k of a stored user: everything seen before as_of and the online recent items
        (newer, if the online store was refreshed after the version loaded) removed."""
        recent = row.get("recent_item_ids") or []
        exclude = np.union1d(loaded.seen.get(user_id), np.asarray(recent, dtype=np.int64))
        items = loaded.recommend(user_id, row, k, exclude)
        return {"excluded": int(exclude.size), "items": items}

    unknown: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "Unknown user"}
    }
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {"model": Problem, "description": "No model version loaded"}
    }

    @app.get(
        KNOWN_USER_ROUTE,
        response_model=Recommendations,
        responses={**unknown, **unavailable},
        tags=["recommendations"],
    )
    async def recommend_user(
        user_id: UserId,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items.")] = DEFAULT_K,
    ) -> dict[str, Any]:
        """Top-k items for a known user: Feast online features → user tower → item search,
        already-seen items removed."""
        return known_user(served(), user_id, k)

    def known_user(loaded: Loaded, user_id: int, k: int) -> dict[str, Any]:
        row = online(USER_SERVICE, user_id)
        if all(row.get(c) is None for c in FEATURE_COLUMNS) and not loaded.knows_user(user_id):
            raise HTTPException(
                404,
                f"user {user_id} is unknown: no online features and not in model version "
                f"{loaded.version}; POST /recommendations with profile features for a new user",
            )
        result = for_user(loaded, user_id, row, k)
        return {"user_id": user_id, "model_version": loaded.version, "k": k, **result}

    def fast_answer(user_id: int, k: int) -> dict[str, Any] | None:
        """The route's 200 answer, or None when the route must answer (503, 404...)."""
        loaded = state.loaded
        if loaded is None:
            return None
        try:
            return known_user(loaded, user_id, k)
        except HTTPException:
            return None

    @app.post(
        "/recommendations",
        response_model=Recommendations,
        responses=unavailable,
        tags=["recommendations"],
    )
    async def recommend_new_user(body: ColdStartRequest) -> dict[str, Any]:
        """Top-k items for a user the store does not know (cold start), from request-time
        profile features and optional recent items; the recent items are not recommended."""
        loaded = served()
        recent = body.recent_item_ids or []
        row = loaded.cold_row(
            age=body.age,
            gender=body.gender,
            occupation=body.occupation,
            zip_code=body.zip_code,
            recent_item_ids=recent,
            recent_ratings=body.recent_ratings,
        )
        exclude = np.unique(np.asarray(recent, dtype=np.int64))
        items = loaded.recommend(None, row, body.k, exclude)
        return {
            "user_id": None,
            "model_version": loaded.version,
            "k": body.k,
            "excluded": int(exclude.size),
            "items": items,
        }

    @app.get(
        "/candidates/{user_id}",
        response_model=Candidates,
        responses={**unknown, **unavailable},
        tags=["recommendations"],
    )
    async def candidates(user_id: UserId) -> dict[str, Any]:
        """The candidates the pipeline precomputed for the user. If the stored row comes
        from another model version than the one served (a promotion in progress), they
        are recomputed with the served version (``source: recomputed``)."""
        loaded = served()
        row = online(CANDIDATES_SERVICE, user_id)
        stored, ids = row.get("model_version"), row.get("candidate_item_ids")
        if stored is None or ids is None:
            raise HTTPException(404, f"no precomputed candidates for user {user_id}")
        if stored == loaded.version:
            try:
                items = loaded.describe(
                    np.asarray(ids, dtype=np.int64),
                    np.asarray(row.get("candidate_scores") or [], dtype=np.float32),
                )
                return {"user_id": user_id, "model_version": loaded.version,
                        "stored_version": stored, "source": "online_store", "items": items}  # fmt: skip
            except (KeyError, ValueError):  # ids or scores that do not fit the table
                log.warning("candidates of user %d do not match version %s's item table",
                            user_id, stored)  # fmt: skip
        features = online(USER_SERVICE, user_id)
        result = for_user(loaded, user_id, features, len(ids) or CANDIDATES_K)
        return {"user_id": user_id, "model_version": loaded.version, "stored_version": stored,
                "source": "recomputed", "items": result["items"]}  # fmt: skip

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up (says nothing about the model: see /readyz)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"description": "Not ready (the body says why)"}},
    )
    async def readyz() -> JSONResponse:
        """200 when a consistent model version (checkpoint, item table, current.json) is
        served; 503 with the reason otherwise."""
        ready, body = state.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests by endpoint and status, latency histogram,
        the served model version."""
        content, content_type = metrics.exposition()
        return Response(content, media_type=content_type)

    if settings.fast_path:
        route = next(r for r in app.routes if getattr(r, "path", None) == KNOWN_USER_ROUTE)
        # Appended: the innermost user middleware, inside the metrics and body limit.
        app.user_middleware.append(Middleware(KnownUserFastPath, answer=fast_answer, route=route))
    return app
