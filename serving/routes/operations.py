"""The operations routes: ``/healthz`` (the process answers), ``/readyz`` (a consistent
version is served) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from serving.deps import State
from serving.schemas import Readiness

router = APIRouter(tags=["operations"])
TEXT = {"text/plain": {"schema": {"type": "string"}}}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (says nothing about the model: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Not ready (the body says why)"}})  # fmt: skip
async def readyz(state: State) -> JSONResponse:
    """200 when a consistent model version (checkpoint, item table, current.json) is
    served; 503 with the reason otherwise."""
    ready, body = state.readiness()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": TEXT, "description": "Prometheus text format 0.0.4"}})  # fmt: skip
async def prometheus(state: State) -> Response:
    """Prometheus text format: requests by endpoint and status, latency histogram,
    the served model version."""
    content, content_type = state.metrics.exposition()
    return Response(content, media_type=content_type)
