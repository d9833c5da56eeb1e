"""The honest comparison: two-tower models (one per loss) against the baselines (popularity
all-time and recent, EASE, ItemKNN, segment popularity) on the temporal test window, warm and
cold users reported apart, every model through ``towers.evaluate``.

Protocol. Every model chooses what it can on the validation window only: the two-tower its
temperature (from ``TEMPERATURES``), its epoch (early stopping), its recency half-life and its
popularity prior (:func:`choose_prior`, re-scoring only), recent popularity its
trailing window, EASE its λ, ItemKNN its neighbours and shrinkage, segment popularity its
profile fields (:func:`baselines`; the choices go into metrics.json under ``choices``). Then,
for the test window (``test_start`` to ``as_of``), the baselines are fitted on everything
before ``test_start`` (train + validation); the two-tower keeps the weights trained on the
training split and reads each user's and item's features as of ``test_start`` through Feast
(so its inputs include the validation weeks, as they would online). ``refit=True`` instead
retrains it on the train and validation rows for the epochs chosen on validation; on
MovieLens-100K that scored lower (README, "Two-tower results"). Items a user interacted with
before ``test_start`` are removed from the ranking (``towers.evaluate``).

    python -m towers compare --losses softmax bce triplet
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from towers.baselines import (
    Popularity,
    best_of,
    sample_rows,
    sample_users,
    tune_popularity_window,
    val_recall,
)
from towers.config import TowerConfig
from towers.data import EvalWindow, TowerData, TowerSource, load_source, take, tower_data
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
from towers.evaluate import EvalSplit, aggregate, per_user_metrics, report
from towers.itemknn import ItemKNN, itemknn_search
from towers.model import logits
from towers.segments import (
    SEGMENTATIONS,
    SegmentPopularity,
    best_segmentation,
    segmentation_search,
)
from towers.train import Training, TrainResult, embed, save_checkpoint, train

log = logging.getLogger(__name__)

# Candidate softmax temperatures, chosen per dataset on validation: sharp scores suit
# strongly personal data (the planted synthetic factors: 0.05), flat ones data where the
# item prior carries most of the signal (MovieLens-100K's temporal split: 1.0).
TEMPERATURES = (0.05, 0.2, 1.0)
METRIC = "recall@20"  # the per-user score kept for the quality gate (PER_USER)


# Candidate half-lives (days) of the recency weight of training rows (TowerConfig.
# recency_half_life_days; 0: every row alike), tried at the chosen temperature: on
# MovieLens-100K's validation cuts 30 days helped on every cut, on planted-factor data,
# which does not drift, it only discards signal (README, "User tower history encoder").
HALF_LIVES = (0.0, 30.0)


# Baseline choices (and the two-tower's popularity prior) are made on at most this many
# validation users: each choice scores the window once per grid point (about 30 in all), and
# grid points are compared on the same users, a paired difference far more precise than
# either mean.
MAX_VAL_USERS = 2000


# Popularity prior (TowerConfig.popularity_prior): the weights tried on validation, doubled
# past the largest while it ties or beats the count's other weights (up to MAX_PRIOR_WEIGHT),
# for each count it may weigh: the 7- and 30-day counts (recent popularity chose a 14-90
# day window on every MovieLens-100K backtest cut) and the all-time count.
PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
PRIOR_FEATURES = ("item_count_7d", "item_count_30d", "item_interaction_count")
MAX_PRIOR_WEIGHT = 64.0


def tried_key(temperature: float, half_life: float) -> str:
    """The name of one tuning run: "T=0.05", or "T=1, half-life 30d" when weighted."""
    return f"T={temperature:g}" + (f", half-life {half_life:g}d" if half_life else "")


def prior_key(weight: float, feature: str) -> str:
    """The name of one prior setting: "none", or "0.5 log1p(item_count_30d)"."""
    return f"{weight:g} log1p({feature})" if weight else "none"


def choose_prior(
    result: TrainResult, window: EvalWindow, weights: tuple[float, ...] = PRIOR_WEIGHTS,
    features: tuple[str, ...] = PRIOR_FEATURES, max_users: int | None = MAX_VAL_USERS,
) -> tuple[TrainResult, dict[str, float]]:  # fmt: skip
    """The popularity prior of ``result``'s model chosen on ``window`` (validation recall@
    ``select_k`` of all its users, at most ``max_users`` drawn at random): each weight times
    each count re-scores the same vectors, no training. Ties keep the smaller weight (no
    prior first). Returns (the run with the prior set in its config and model, validation
    recall by :func:`prior_key`)."""
    model, k = result.model, result.config.select_k
    cfg = replace(result.config, popularity_prior=0.0)
    model.set_config(cfg)
    rows = sample_rows(len(window.split.user_ids), max_users)
    split = sample_users(window.split, max_users)
    u = embed(model.user_tower, take(window.users, torch.from_numpy(rows)))  # (U, d)
    v = embed(model.item_tower, window.items)  # (N, d [+ 1]) without the prior
    base = logits(u, v, cfg)  # (U, N)

    def recall(prior: torch.Tensor | float) -> float:
        scores = base + prior
        return val_recall(lambda r: scores[torch.from_numpy(r)].numpy(), split, k)

    tried: dict[tuple[float, str], float] = {(0.0, cfg.popularity_feature): recall(0.0)}
    for feature in features:
        counts = model.item_tower.log_count(window.items["nums"], feature)  # (N,)
        grid = sorted(w for w in weights if w > 0)
        while grid:
            w = grid.pop(0)
            tried[(w, feature)] = recall(w * counts)
            ours = [value for (x, f), value in tried.items() if f == feature or not x]
            if not grid and tried[(w, feature)] >= max(ours) and 2 * w <= MAX_PRIOR_WEIGHT:
                grid.append(2 * w)  # this count's best (or a tie) sits at the edge: extend
    weight, feature = best_of(tried)
    chosen = replace(cfg, popularity_prior=weight, popularity_feature=feature)
    model.set_config(chosen)
    scores = {prior_key(w, f): value for (w, f), value in tried.items()}
    log.info("popularity prior: validation recall@%d %s -> %s", k, scores,
             prior_key(weight, feature))  # fmt: skip
    return replace(result, config=chosen), scores


# Successive halving (Jamieson and Talwalkar, AISTATS 2016) over the candidates of each
# tuning stage: every candidate trains this many epochs, then only the best on validation
# continues to its early stop; the others stop there. On MovieLens-100K the best epoch is
# the 1st to 3rd, so the runs cut here would mostly have run their patience out for nothing.
PROBE_EPOCHS = 1

Score = Callable[[str, Training], float]


def _halving(
    runs: dict[str, Training], probe: int, score: Score,
    probed: dict[str, float], final: dict[str, float],
) -> str:  # fmt: skip
    """Advance every run ``probe`` epochs (or to its end) and ``score`` it there, then the
    best of them to its end, scored again. ``probed`` and ``final`` receive each run's score
    at the probe and at its end (a run cut at the probe ends there); a run already in
    ``probed`` (the leader of an earlier stage) competes on its probe score without training.
    Returns the run with the best final score."""
    for name, run in runs.items():
        if name not in probed:
            while not run.done and len(run.history) < probe:
                run.epoch()
            probed[name] = final[name] = score(name, run)
    leader = max(runs, key=lambda name: probed[name])
    if not runs[leader].done:
        while not runs[leader].done:
            runs[leader].epoch()
        final[leader] = score(leader, runs[leader])
    return max(runs, key=lambda name: final[name])


def tune(
    cfg: TowerConfig, data: TowerData, temperatures: tuple[float, ...] = TEMPERATURES,
    progress: bool = True, half_lives: tuple[float, ...] = HALF_LIVES, prior: bool = True,
    probe_epochs: int = PROBE_EPOCHS,
) -> tuple[TrainResult, dict[str, float], dict[str, float]]:  # fmt: skip
    """One run per temperature, then, at the best one, one per other recency half-life;
    each run scored at its own popularity prior chosen on validation (``prior``,
    :func:`choose_prior`), the best on validation recall@`select_k` kept. Each stage is a
    successive halving (:data:`PROBE_EPOCHS`): a run cut after ``probe_epochs`` is scored
    as it stands there. Returns (the best run, each run's validation recall at its prior by
    :func:`tried_key`, the best run's validation recall by prior setting)."""
    assert data.val is not None, "tuning needs a validation window"
    val = data.val
    results: dict[str, TrainResult] = {}
    grids: dict[str, dict[str, float]] = {}

    def score(name: str, run: Training) -> float:
        # A run that may go on is scored on a copy of its best weights (its prior set there).
        result = run.result(copy=not run.done)
        if prior:
            results[name], grids[name] = choose_prior(result, val)
        else:
            results[name], grids[name] = result, {"none": run.best}
        return max(grids[name].values())

    probed: dict[str, float] = {}
    scores: dict[str, float] = {}
    first = half_lives[0] if half_lives else cfg.recency_half_life_days
    runs = {tried_key(t, first): Training(replace(cfg, temperature=t, recency_half_life_days=first),
                                          data, progress) for t in temperatures}  # fmt: skip
    best = _halving(runs, probe_epochs, score, probed, scores)
    chosen = replace(runs[best].cfg, popularity_prior=0.0)
    more = {
        tried_key(chosen.temperature, h): Training(
            replace(chosen, recency_half_life_days=h), data, progress
        )
        for h in half_lives[1:]
    }
    if more:
        more[best] = runs[best]  # the leader so far competes on its probe-epoch score
        best = _halving(more, probe_epochs, score, probed, scores)
    k = f"recall@{cfg.select_k}"
    log.info("%s: validation %s at each run's prior %s -> %s", cfg.loss, k, scores, best)
    return results[best], scores, grids[best]


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


def curves_png(runs: dict[str, TrainResult], k: int) -> bytes:
    """Training loss and validation recall@k per epoch, one line per loss."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    loss_ax, recall_ax = fig.subplots(1, 2)
    for name, run in runs.items():
        epochs = [h["epoch"] for h in run.history]
        loss_ax.plot(epochs, [h["loss"] for h in run.history], marker="o", label=name)
        recall_ax.plot(
            epochs, [h["val"][f"recall@{k}"] for h in run.history], marker="o", label=name
        )
    loss_ax.set(title="training loss", xlabel="epoch")
    recall_ax.set(title=f"validation recall@{k}", xlabel="epoch")
    recall_ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def fit_span(source: TowerSource, fit_on: tuple[str, ...]) -> dict[str, Any]:
    """What a model trained on the splits ``fit_on`` saw: its rows and their time range."""
    table = source.table
    rows = table.filter(pc.is_in(table.column("split"), pa.array(list(fit_on))))
    when = rows.column("event_timestamp")
    first, last = pc.min(when).as_py(), pc.max(when).as_py()
    return {"splits": list(fit_on), "rows": rows.num_rows,
            "first_event": str(first), "last_event": str(last)}  # fmt: skip


PER_USER = "per_user_test.parquet"  # each model's test recall@20 per user (recsys.gate)


def compare(
    settings: Any,
    losses: tuple[str, ...] = ("softmax", "bce", "triplet"),
    base: TowerConfig | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    refit: bool = False,
    temperatures: tuple[float, ...] = TEMPERATURES,
    serve: bool = False,
    files: tuple[str, str] = ("two_tower_{loss}.pt", "two_tower_{loss}_served.pt"),
) -> dict[str, Any]:
    """Train one two-tower per loss, score everything on test, write the report.

    Each loss's evaluated model is saved as ``files[0]`` (its scores are the report's). With
    ``serve``, the model to serve is trained too, as ``files[1]`` (``{loss}`` in either is
    the loss): the same temperature and epoch count, refit on every row before ``as_of``
    (train + val + test), so the newest users and items have embeddings. It is not scored:
    no window is left that it has not seen. An epoch is one pass over the rows, so the refit
    runs as many passes as were chosen on validation (more steps on more rows), the
    convention when a model is retrained on all data after early stopping.
    """
    from recsys.io import atomic_write_bytes
    from towers.rescore import per_user_of

    base = base or TowerConfig()
    out_dir = Path(out_dir or settings.paths.data_dir / "evaluation")
    seconds: dict[str, float] = {}  # wall time of each phase, in runs.json
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(seconds.get(phase, 0.0) + now - clock, 2)
        clock = now

    source = load_source(settings, with_test=True, with_as_of=serve)
    lap("load features")
    data = tower_data(source, ("train",), base.history)
    fit_on = ("train", "val") if refit else ("train",)
    final_data = tower_data(source, fit_on, base.history) if refit else data
    all_data = tower_data(source, ("train", "val", "test"), base.history) if serve else None
    assert data.val is not None and data.test is not None
    lap("encode rows")
    users = pd.read_parquet(settings.paths.dataset / "users.parquet")
    per_user: dict[str, np.ndarray] = {}
    results, choices = baselines(data.val.split, data.test.split, source.interactions, users,
                                 per_user=per_user)  # fmt: skip
    lap("baselines")
    runs: dict[str, TrainResult] = {}
    tuning: dict[str, dict[str, float]] = {}
    priors: dict[str, dict[str, float]] = {}
    for loss in losses:
        cfg = replace(base, loss=loss)  # type: ignore[arg-type]
        runs[loss], tuning[loss], priors[loss] = tune(cfg, data, temperatures, progress)
        lap("tune on validation")
        chosen, epochs = runs[loss].config, runs[loss].best_epoch
        final = train(chosen, final_data, progress=progress, epochs=epochs) if refit else runs[loss]
        assert final_data.test is not None
        name = f"two-tower ({loss})"
        scores = per_user_of(final.model, final_data.test)
        results[name], per_user[name] = aggregate(scores, final_data.test.split), scores[METRIC]
        evaluated_file, served_file = (file.format(loss=loss) for file in files)
        save_checkpoint(final, out_dir / evaluated_file)
        lap("score on test")
        choices[name] = {"temperature": chosen.temperature, "best_epoch": epochs,
                         "recency_half_life_days": chosen.recency_half_life_days,
                         "popularity_prior": prior_key(chosen.popularity_prior,
                                                       chosen.popularity_feature),
                         "evaluated": {"checkpoint": evaluated_file,
                                       **fit_span(source, fit_on)}}  # fmt: skip
        if all_data is not None:
            served = train(chosen, all_data, progress=progress, epochs=epochs)
            save_checkpoint(served, out_dir / served_file)
            choices[name]["served"] = {"checkpoint": served_file,
                                       **fit_span(source, ("train", "val", "test"))}  # fmt: skip
            lap("refit on all data")
    notes = BASELINE_NOTES + (
        " The two-tower's scores are those of its evaluated checkpoint (trained without the "
        "test window; see its choices); the served checkpoint, refit on all data up to "
        "as_of, is not scored." if serve else ""
    )  # fmt: skip
    paths = report(results, out_dir, f"test window, {settings.dataset}", choices, notes)
    frame = pd.DataFrame({"user_id": data.test.split.user_ids, **per_user})
    atomic_write_bytes(out_dir / PER_USER, frame.to_parquet(index=False))
    atomic_write_bytes(out_dir / "training_curves.png", curves_png(runs, base.select_k))
    lap("report")
    summary = {
        "seconds": seconds,
        "results": results,
        "ease_l2": choices["EASE"].get("l2"),
        "choices": choices,
        "refit": refit,
        "runs": {
            k: {
                "temperature": r.config.temperature,
                "recency_half_life_days": r.config.recency_half_life_days,
                "val_recall_tried": tuning[k],
                "popularity_prior": prior_key(
                    r.config.popularity_prior, r.config.popularity_feature
                ),
                "val_recall_by_prior": priors[k],
                "best_epoch": r.best_epoch,
                "seconds": r.seconds,
                "history": r.history,
            }
            for k, r in runs.items()
        },  # fmt: skip
        "files": {k: str(v) for k, v in paths.items()},
    }
    atomic_write_bytes(out_dir / "runs.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
