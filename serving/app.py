"""The online recommendations API (FastAPI): ``create_app(settings)``.

Endpoints (OpenAPI docs at ``/docs``):

* ``GET /recommendations/{user_id}?k=20``: the user's online features (Feast service
  ``user_tower_serving_v1``) → user tower → top-k in the version's item table, every item
  the user interacted with before ``as_of`` removed.
* ``POST /recommendations``: a user the store does not know (cold start): profile features
  and optional recent items in the body, turned into the same feature columns in Python
  (``recsys.features.online``).
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

Request and response bodies are in ``serving.schemas``, error answers in ``serving.errors``.
Client errors are 4xx, never 5xx, and each is in the OpenAPI document: invalid ids, ``k``
or bodies, and bodies that are not JSON, are 422 (one error shape), unknown users 404,
bodies over ``max_body_bytes`` 413. 503 means the server has no model version or Feast
store to answer with. ``tests/serving/test_schemathesis.py`` holds the server to it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import pydantic_core
from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import JSONResponse, Response
from starlette.middleware import Middleware

from recsys.features.online import FEATURE_COLUMNS
from serving.errors import BodyLimitMiddleware, install_error_handlers
from serving.loaded import MAX_K, Loaded
from serving.metrics import Metrics, MetricsMiddleware
from serving.schemas import (
    DEFAULT_K,
    INT64_MAX,
    INT64_MIN,
    Candidates,
    ColdStartRequest,
    Problem,
    Readiness,
    Recommendations,
    exact_request_schemas,
)
from serving.settings import ServingSettings
from serving.state import ServingState
from serving.threads import limit_threads

log = logging.getLogger(__name__)

USER_SERVICE = "user_tower_serving_v1"
KNOWN_USER_ROUTE = "/recommendations/{user_id}"
CANDIDATES_SERVICE = "user_candidates_v1"
# Candidates recomputed for a row of another version: as many as the pipeline stores.
CANDIDATES_K = 100

UserId = Annotated[
    int, Path(ge=INT64_MIN, le=INT64_MAX, description="The user's id (int64).", examples=[1])
]


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
        # Any request: the body limit is checked before routing.
        responses={413: {"model": Problem, "description": "Request body over the size limit"}},
    )
    app.state.serving = state
    generated_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # generated once, then served as cached
            app.openapi_schema = exact_request_schemas(generated_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    install_error_handlers(app)

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
            log.error("online lookup of user %d in %s: %r", user_id, service, exc)
            where = state.online_store_description()
            detail = f"{type(exc).__name__}: {exc}"[:300]
            raise HTTPException(503, f"online store unavailable ({where}): {detail}") from exc

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
        return {"user_id": user_id, "model_version": loaded.version,
                "fallback": loaded.fallback, "model_kind": loaded.model_kind, "k": k,
                **result}  # fmt: skip

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
        recent = body.interactions()
        row = loaded.cold_row(
            age=body.age,
            gender=body.gender,
            occupation=body.occupation,
            zip_code=body.zip_code,
            recent=recent,
        )
        exclude = np.unique(np.fromiter((i.item_id for i in recent), np.int64, len(recent)))
        items = loaded.recommend(None, row, body.k, exclude)
        return {
            "user_id": None,
            "model_version": loaded.version,
            "fallback": loaded.fallback,
            "model_kind": loaded.model_kind,
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
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready (the body says why)"}},
    )
    async def readyz() -> JSONResponse:
        """200 when a consistent model version (checkpoint, item table, current.json) is
        served; 503 with the reason otherwise."""
        ready, body = state.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    text = {"text/plain": {"schema": {"type": "string"}}}

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": text, "description": "Prometheus text format 0.0.4"}},
    )
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
