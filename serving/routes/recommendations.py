"""The recommendation routes: a known user's top-k (``GET /recommendations/{user_id}``), a
new user's (``POST /recommendations``), and the precomputed candidates
(``GET /candidates/{user_id}``). The endpoints are described in ``serving.app``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query

from recsys.features.online import FEATURE_COLUMNS
from serving.deps import State, online, served
from serving.loaded import MAX_K, Loaded
from serving.schemas import (
    DEFAULT_K,
    INT64_MAX,
    INT64_MIN,
    Candidates,
    ColdStartRequest,
    Problem,
    Recommendations,
)
from serving.state import ServingState

log = logging.getLogger(__name__)

USER_SERVICE = "user_tower_serving_v1"
KNOWN_USER_ROUTE = "/recommendations/{user_id}"
CANDIDATES_SERVICE = "user_candidates_v1"
# Candidates recomputed for a row of another version: as many as the pipeline stores.
CANDIDATES_K = 100

UserId = Annotated[
    int, Path(ge=INT64_MIN, le=INT64_MAX, description="The user's id (int64).", examples=[1])
]
UNKNOWN: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "Unknown user"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "No model version loaded"}
}

router = APIRouter(tags=["recommendations"])


def for_user(loaded: Loaded, user_id: int, row: dict[str, Any], k: int) -> dict[str, Any]:
    """Top-k of a stored user: everything seen before as_of and the online recent items
    (newer, if the online store was refreshed after the version loaded) removed."""
    recent = row.get("recent_item_ids") or []
    exclude = np.union1d(loaded.seen.get(user_id), np.asarray(recent, dtype=np.int64))
    items = loaded.recommend(user_id, row, k, exclude)
    return {"excluded": int(exclude.size), "history": [int(i) for i in recent], "items": items}


def known_user(state: ServingState, loaded: Loaded, user_id: int, k: int) -> dict[str, Any]:
    """The answer of ``GET /recommendations/{user_id}`` (the route's and the fast path's)."""
    row = online(state, USER_SERVICE, user_id)
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


def fast_answer(state: ServingState, user_id: int, k: int) -> dict[str, Any] | None:
    """The route's 200 answer, or None when the route must answer (503, 404...)."""
    loaded = state.loaded
    if loaded is None:
        return None
    try:
        return known_user(state, loaded, user_id, k)
    except HTTPException:
        return None


@router.get(KNOWN_USER_ROUTE, response_model=Recommendations,
            responses={**UNKNOWN, **UNAVAILABLE})  # fmt: skip
async def recommend_user(
    state: State,
    user_id: UserId,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items.")] = DEFAULT_K,
) -> dict[str, Any]:
    """Top-k items for a known user: Feast online features → user tower → item search,
    already-seen items removed."""
    return known_user(state, served(state), user_id, k)


@router.post("/recommendations", response_model=Recommendations, responses=UNAVAILABLE)
async def recommend_new_user(state: State, body: ColdStartRequest) -> dict[str, Any]:
    """Top-k items for a user the store does not know (cold start), from request-time
    profile features and optional recent items; the recent items are not recommended."""
    loaded = served(state)
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
        "history": [int(i) for i in row.get("recent_item_ids") or []],
        "items": items,
    }


@router.get("/candidates/{user_id}", response_model=Candidates,
            responses={**UNKNOWN, **UNAVAILABLE})  # fmt: skip
async def candidates(state: State, user_id: UserId) -> dict[str, Any]:
    """The candidates the pipeline precomputed for the user. If the stored row comes
    from another model version than the one served (a promotion in progress), they
    are recomputed with the served version (``source: recomputed``)."""
    loaded = served(state)
    row = online(state, CANDIDATES_SERVICE, user_id)
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
    features = online(state, USER_SERVICE, user_id)
    result = for_user(loaded, user_id, features, len(ids) or CANDIDATES_K)
    return {"user_id": user_id, "model_version": loaded.version, "stored_version": stored,
            "source": "recomputed", "items": result["items"]}  # fmt: skip
