"""The honest comparison: two-tower models (one per loss) against the baselines (popularity
all-time and recent, EASE, ItemKNN, segment popularity) on the temporal test window, warm and
cold users reported apart, every model through ``towers.evaluate``.

Protocol. Every model chooses what it can on the validation window only: the two-tower its
temperature (from ``TEMPERATURES``) and its epoch (early stopping), recent popularity its
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from towers.baselines import Popularity, best_of, sample_users, tune_popularity_window
from towers.config import TowerConfig
from towers.data import TowerData, TowerSource, load_source, tower_data
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
from towers.segments import (
    SEGMENTATIONS,
    SegmentPopularity,
    best_segmentation,
    segmentation_search,
)
from towers.train import Training, TrainResult, save_checkpoint, train

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


def tried_key(temperature: float, half_life: float) -> str:
    """The name of one tuning run: "T=0.05", or "T=1, half-life 30d" when weighted."""
    return f"T={temperature:g}" + (f", half-life {half_life:g}d" if half_life else "")


# Successive halving (Jamieson and Talwalkar, AISTATS 2016) over the candidates of each
# tuning stage: every candidate trains this many epochs, then only the best on validation
# continues to its early stop; the others stop there. On MovieLens-100K the best epoch is
# the 1st to 3rd, so the runs cut here would mostly have run their patience out for nothing.
PROBE_EPOCHS = 1


def _halving(runs: dict[str, Training], probe: int) -> tuple[str, dict[str, float]]:
    """Advance every run ``probe`` epochs (or to its end), then the best of them on
    validation at that point to its end. Returns (the run with the best validation score,
    each run's best score). A run cut at ``probe`` scored at most the leader's score there,
    so the best run is always one that ran to its end."""
    for run in runs.values():
        while not run.done and len(run.history) < probe:
            run.epoch()

    def at_probe(run: Training) -> float:
        return max(e["val"][f"recall@{run.cfg.select_k}"] for e in run.history[:probe])

    leader = runs[max(runs, key=lambda name: at_probe(runs[name]))]
    while not leader.done:
        leader.epoch()
    scores = {name: run.best for name, run in runs.items()}
    return max(scores, key=lambda name: scores[name]), scores


def tune(
    cfg: TowerConfig, data: TowerData, temperatures: tuple[float, ...] = TEMPERATURES,
    progress: bool = True, half_lives: tuple[float, ...] = HALF_LIVES,
    probe_epochs: int = PROBE_EPOCHS,
) -> tuple[TrainResult, dict[str, float]]:  # fmt: skip
    """One run per temperature, then, at the best one, one per other recency half-life; the
    best on validation recall@`select_k` is kept. Each stage is a successive halving
    (:data:`PROBE_EPOCHS`): runs cut after ``probe_epochs`` report their best score so far.
    Returns (the best run, validation recall by :func:`tried_key`)."""
    first = half_lives[0] if half_lives else cfg.recency_half_life_days
    runs = {tried_key(t, first): Training(replace(cfg, temperature=t, recency_half_life_days=first),
                                          data, progress) for t in temperatures}  # fmt: skip
    best, scores = _halving(runs, probe_epochs)
    chosen = runs[best].cfg
    more = {
        tried_key(chosen.temperature, h): Training(
            replace(chosen, recency_half_life_days=h), data, progress
        )
        for h in half_lives[1:]
    }
    if more:
        more[best] = runs[best]  # the leader so far competes on its probe-epoch score
        best, tried = _halving(more, probe_epochs)
        scores.update(tried)
    k = f"recall@{cfg.select_k}"
    log.info("%s: validation %s %s -> %s", cfg.loss, k, scores, best)
    runs.update(more)
    return runs[best].result(), scores


BASELINE_NOTES = (
    'EASE and ItemKNN rank users with no history by all-time popularity, so their "all" '
    "column is comparable; segment popularity ranks by popularity within the user's profile "
    "segment (global popularity for small segments). Every choice was made on validation."
)


# Baseline choices are made on at most this many validation users: each choice scores the
# window once per grid point (about 30 in all), and grid points are compared on the same
# users, a paired difference far more precise than either mean.
MAX_VAL_USERS = 2000


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
    for loss in losses:
        cfg = replace(base, loss=loss)  # type: ignore[arg-type]
        runs[loss], tuning[loss] = tune(cfg, data, temperatures, progress)
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
