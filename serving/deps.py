"""What the routes depend on (FastAPI ``Depends``): the server's state, the version served,
an online lookup. ``served`` and ``online`` are called inside the route bodies, not as
dependencies, so that a request's 422 (invalid parameters) comes before a 503."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from serving.loaded import Loaded
from serving.state import ServingState

log = logging.getLogger(__name__)


def serving_state(request: Request) -> ServingState:
    """The app's ``ServingState`` (set by ``serving.app.create_app``)."""
    state: ServingState = request.app.state.serving
    return state


State = Annotated[ServingState, Depends(serving_state)]


def served(state: ServingState) -> Loaded:
    """The version served, read once: the whole request uses it; 503 when there is none."""
    loaded = state.loaded
    if loaded is None:
        error = state.failure.error if state.failure else "loading"
        raise HTTPException(503, f"no model version loaded ({error})")
    return loaded


def online(state: ServingState, service: str, user_id: int) -> dict[str, Any]:
    """One user's online row of a Feast service; 503 when the store fails (the store, not the
    client: a log line too)."""
    try:
        return state.online_row(service, user_id)
    except Exception as exc:
        log.error("online lookup of user %d in %s: %r", user_id, service, exc)
        where = state.online_store_description()
        detail = f"{type(exc).__name__}: {exc}"[:300]
        raise HTTPException(503, f"online store unavailable ({where}): {detail}") from exc
