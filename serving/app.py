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

A plainly valid ``GET /recommendations/{user_id}`` is answered by
``serving.fast_path.KnownUserFastPath`` (the same answer without FastAPI's per-request
machinery); everything else by the routes (``serving.routes``).

Request and response bodies are in ``serving.schemas``, error answers in ``serving.errors``.
Client errors are 4xx, never 5xx, and each is in the OpenAPI document: invalid ids, ``k``
or bodies, and bodies that are not JSON, are 422 (one error shape), unknown users 404,
bodies over ``max_body_bytes`` 413. 503 means the server has no model version or Feast
store to answer with. ``tests/serving/test_schemathesis.py`` holds the server to it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware

from serving.errors import BodyLimitMiddleware, install_error_handlers
from serving.fast_path import KnownUserFastPath
from serving.metrics import Metrics, MetricsMiddleware
from serving.routes import operations, recommendations
from serving.schemas import Problem, exact_request_schemas
from serving.settings import ServingSettings
from serving.state import ServingState
from serving.threads import limit_threads

log = logging.getLogger(__name__)


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

    app.include_router(recommendations.router)
    app.include_router(operations.router)

    if settings.fast_path:
        # The route whose path labels the fast answers' metrics (the router's own: FastAPI
        # includes a router's routes lazily, so app.routes does not list them).
        path = recommendations.KNOWN_USER_ROUTE
        route = next(r for r in recommendations.router.routes if getattr(r, "path", None) == path)

        def answer(user_id: int, k: int) -> dict[str, Any] | None:
            return recommendations.fast_answer(state, user_id, k)

        # Appended: the innermost user middleware, inside the metrics and body limit.
        app.user_middleware.append(Middleware(KnownUserFastPath, answer=answer, route=route))
    return app
