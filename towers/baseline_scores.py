"""Every baseline (popularity all-time and recent, EASE, ItemKNN, segment popularity) with its
settings chosen on the validation window, fitted on everything before the test window and
scored there: the models the two-tower is compared with, and the fallbacks it may be served
behind (``recsys.fallback``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from towers.baselines import (
    MAX_VAL_USERS,
    Popularity,
    best_of,
    sample_users,
    tune_popularity_window,
)
from towers.ease import (
    EASE,
    EASE_MAX_ITEMS,
    MIN_SAMPLED_ITEMS,
    EaseTooLarge,
    check_ease_fits,
    default_memory_budget,
    ease_lambda_search,
    ease_max_items,
)
from towers.evaluate import EvalSplit, aggregate, per_user_metrics
from towers.itemknn import ItemKNN, itemknn_search
from towers.segments import (
    SEGMENTATIONS,
    SegmentPopularity,
    best_segmentation,
    segmentation_search,
)

log = logging.getLogger(__name__)


BASELINE_NOTES = (
    'EASE and ItemKNN rank users with no history by all-time popularity, so their "all" '
    "column is comparable; segment popularity ranks by popularity within the user's profile "
    "segment (global popularity for small segments). Every choice was made on validation."
)


def _keyed(tried: dict[Any, Any]) -> dict[str, Any]:
    """JSON-ready keys: None is all history, tuples are (neighbours, shrink)."""

    def key(k: Any) -> str:
        if k is None:
            return "all"
        return f"k={k[0]} shrink={k[1]:g}" if isinstance(k, tuple) else f"{k:g}"

    return {key(k): v for k, v in tried.items()}


def _ease(
    before_val: pd.DataFrame,
    val: EvalSplit,
    before_test: pd.DataFrame,
    test: EvalSplit,
    memory_budget: int | None,
    min_items: int,
    k: int,
    max_items: int = EASE_MAX_ITEMS,
) -> tuple[EASE | None, dict[str, Any]]:
    """EASE fitted for the test window (None if skipped) and its choices: λ, and the items
    it models (at most ``max_items``, and what the memory budget allows)."""
    budget = default_memory_budget() if memory_budget is None else memory_budget
    n_items, top = len(test.item_ids), None
    choice: dict[str, Any] = {}
    try:
        check_ease_fits(n_items, budget)
    except EaseTooLarge as exc:
        top = ease_max_items(budget)
        if top < min_items:
            log.warning("EASE skipped: %s", exc)
            return None, {"skipped": f"{exc}; a sampled EASE would model only {top:,} items "
                                     f"(under {min_items:,})"}  # fmt: skip
        choice["sampled"] = (f"{exc}: EASE models the {top:,} most popular items, the other "
                             f"{n_items - top:,} rank below them by popularity")  # fmt: skip
    if (top or n_items) > max_items:
        top = max_items
        choice["sampled"] = (f"{n_items:,} items: over the {max_items:,} whose dense inverse "
                             f"EASE computes per λ tried (towers.ease.EASE_MAX_ITEMS), EASE "
                             f"models the {top:,} most popular items, the other "
                             f"{n_items - top:,} rank below them by popularity")  # fmt: skip
    if "sampled" in choice:
        log.warning("EASE sampled: %s", choice["sampled"])
    lambdas = ease_lambda_search(before_val, val, test.item_ids, k=k, memory_budget=budget,
                                 top_items=top)  # fmt: skip
    l2 = float(best_of(lambdas))
    model = EASE(l2, budget, top).fit(before_test, test.item_ids)
    choice.update(l2=l2, items_modelled=top or n_items, **{f"val_recall@{k}": _keyed(lambdas)})
    choice["val_chosen"] = lambdas[l2]
    return model, choice


def baselines(
    val: EvalSplit,
    test: EvalSplit,
    interactions: pd.DataFrame,
    users: pd.DataFrame | None = None,
    memory_budget: int | None = None,
    k: int = 20,
    min_ease_items: int = MIN_SAMPLED_ITEMS,
    max_val_users: int | None = MAX_VAL_USERS,
    per_user: dict[str, np.ndarray] | None = None,
    models: dict[str, Any] | None = None,
    max_ease_items: int = EASE_MAX_ITEMS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every baseline scored on ``test``, each choice made on ``val`` (recall@``k``).

    Returns ``(results, choices)``: results maps "popularity", "popularity (recent)", "EASE",
    "ItemKNN" and "segment popularity" to their :func:`rank_metrics`; choices records what
    each chose on validation and what was tried. When EASE's dense inverse would exceed
    ``memory_budget`` (bytes; default a share of the available memory), EASE models only the
    most popular items that fit (a sampled EASE, said so in its choices), or is left out, with
    the reason, if that is under ``min_ease_items``; over ``max_ease_items`` items (the
    cost of its λ search), a sampled EASE on that many. Segment popularity is left out when
    ``users`` is None or lacks every field. Choices are made on at most ``max_val_users``
    validation users drawn at random (None: all), which bounds their cost on large windows;
    ``choices["validation users"]`` says how many, and ``choices[f"validation recall@{k}"]``
    each baseline's validation recall@``k`` (all users) at its chosen setting: what a
    fallback is chosen on (``recsys.fallback``). ``per_user``, when given, receives each
    baseline's per-user test recall@``k`` (rows in ``test.user_ids`` order); ``models``,
    when given, each fitted baseline (to score other users of the window: the backtest's).
    """
    item_ids = test.item_ids
    val = sample_users(val, max_val_users)
    before_val = interactions[interactions.event_timestamp < val.start]
    before_test = interactions[interactions.event_timestamp < test.start]
    results: dict[str, Any] = {}
    choices: dict[str, Any] = {"validation users": len(val.user_ids)}
    on_val: dict[str, float] = {}

    def score(name: str, model: Any) -> None:
        users = per_user_metrics(model.score_fn(test), test)
        results[name] = aggregate(users, test)
        if per_user is not None:
            per_user[name] = users[f"recall@{k}"]
        if models is not None:
            models[name] = model

    windows = tune_popularity_window(before_val, val, item_ids, k=k)
    days = best_of(windows)
    score("popularity", Popularity().fit(before_test, item_ids))
    if None in windows:
        on_val["popularity"] = windows[None]
    score("popularity (recent)", Popularity(days).fit(before_test, item_ids, before=test.start))
    choices["popularity (recent)"] = {"window_days": days, f"val_recall@{k}": _keyed(windows)}
    on_val["popularity (recent)"] = windows[days]

    ease, choices["EASE"] = _ease(before_val, val, before_test, test, memory_budget,
                                  min_ease_items, k, max_ease_items)  # fmt: skip
    if ease is not None:
        score("EASE", ease)
        on_val["EASE"] = choices["EASE"].pop("val_chosen")

    knn = itemknn_search(before_val, val, item_ids, k=k)
    neighbours, shrink = best_of(knn)
    score("ItemKNN", ItemKNN(neighbours, shrink).fit(before_test, item_ids))
    choices["ItemKNN"] = {"neighbours": neighbours, "shrink": shrink,
                          f"val_recall@{k}": _keyed(knn)}  # fmt: skip
    on_val["ItemKNN"] = knn[(neighbours, shrink)]

    try:
        if users is None:
            raise ValueError("no users profile given")
        segmentations = segmentation_search(before_val, users, val, item_ids, k=k)
    except ValueError as exc:
        log.warning("segment popularity skipped: %s", exc)
        choices["segment popularity"] = {"skipped": str(exc)}
    else:
        name = best_segmentation(segmentations)
        model = SegmentPopularity(SEGMENTATIONS[name]).fit(before_test, users, item_ids)
        score("segment popularity", model)
        choices["segment popularity"] = {"segmentation": name, f"val_recall@{k}": segmentations}
        on_val["segment popularity"] = segmentations[name]["all"]
    choices[f"validation recall@{k}"] = on_val
    return results, choices
