"""One cut of the rolling backtest (``evaluation.backtest``): the pipeline rebuilt as of the cut in
a folder of its own, the two-tower tuned on validation and refitted on train + validation,
every baseline, and each model's per-user metrics on the window's user groups.

The ``new after N`` group: users first seen in the window with more than N events in it.
Their first N events are the history a cold-start ``POST`` would carry: the feature row is
built by ``recsys.features.online.cold_start_row`` and encoded by ``recsys.features.row_encoding``
with the unknown-user slot, exactly as the API does; EASE and ItemKNN fold the same N events
in (``towers.baselines.HistoryScorer.fold_in_fn``); every model is scored on the rest of
the user's window, the N items removed from its ranking. The ``new items`` group (items
first taken in the window) is ``evaluation.backtest_new_items``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from evaluation.backtest import (
    COLD,
    CONTENT,
    NEW_ITEMS,
    ORACLE,
    TWO_TOWER,
    WARM,
    BacktestConfig,
    CutResult,
    Progress,
    Window,
)
from evaluation.backtest_new_items import new_items_cut
from towers.baselines import best_of
from towers.evaluate import EvalSplit, ScoreFn, item_index, per_user_metrics


def new_user_split(
    interactions: pd.DataFrame, item_ids: np.ndarray, test: EvalSplit, history: int
) -> tuple[EvalSplit, pd.DataFrame]:
    """Users first seen in ``test``'s window with more than ``history`` events in it: their
    first ``history`` events (by time; ties in row order) become ``seen`` and are returned as
    rows (user_id, item_id, rating, event_timestamp), the rest of their window is the truth."""
    when = pd.to_datetime(interactions["event_timestamp"], utc=True)
    before = when < test.start
    inside = ~before & ((when < test.end) if test.end is not None else True)
    new = interactions[inside & ~interactions["user_id"].isin(interactions["user_id"][before])]
    new = new.sort_values(["user_id", "event_timestamp"], kind="stable")
    rank = new.groupby("user_id").cumcount().to_numpy()
    counts = new.groupby("user_id")["user_id"].transform("size").to_numpy()
    new, rank = new[counts > history], rank[counts > history]
    index = item_index(item_ids)
    n_items = len(index)
    cols = index.get_indexer(new["item_id"].to_numpy(np.int64))
    users = np.unique(new["user_id"].to_numpy(np.int64))
    rows = np.searchsorted(users, new["user_id"].to_numpy(np.int64))
    first = rank < history
    seen_keys = np.unique(rows[first & (cols >= 0)] * n_items + cols[first & (cols >= 0)])
    rest = ~first & (cols >= 0)
    truth_keys = np.setdiff1d(np.unique(rows[rest] * n_items + cols[rest]), seen_keys, True)
    kept = np.unique(truth_keys // n_items)  # users with something left to find
    remap = np.full(len(users), -1)
    remap[kept] = np.arange(len(kept))
    seen_keys = seen_keys[np.isin(seen_keys // n_items, kept)]
    truth_rows = remap[truth_keys // n_items]
    seen = sp.csr_matrix(
        (np.ones(len(seen_keys), np.float32), (remap[seen_keys // n_items], seen_keys % n_items)),
        shape=(len(kept), n_items),
    )
    split = EvalSplit(
        item_ids=index.to_numpy(np.int64),
        user_ids=users[kept],
        truth=np.split(truth_keys % n_items, np.flatnonzero(np.diff(truth_rows)) + 1)
        if len(kept) else [],
        seen=seen,
        warm=np.zeros(len(kept), bool),
        start=test.start,
        end=test.end,
    )  # fmt: skip
    given = new[first & np.isin(new["user_id"].to_numpy(np.int64), split.user_ids)]
    return split, given[["user_id", "item_id", "rating", "event_timestamp"]]


def cold_start_batch(
    encoder: Any, profiles: pd.DataFrame, given: pd.DataFrame, items_path: Path,
    recent_items: int,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """User-tower inputs of each profile row with its ``given`` events, built as a cold-start
    ``POST`` builds them (recsys.features.online.cold_start_row, recsys.features.row_encoding),
    sent right after the user's last given event: that is the request time the history's
    time-since features are measured from."""
    from recsys.features.online import Interaction, ItemGenres, cold_start_row
    from recsys.features.row_encoding import RowEncoder

    genres = ItemGenres.from_items(items_path, encoder.genres)
    rows = RowEncoder(encoder)
    by_user = dict(iter(given.groupby("user_id")))
    arrays = []
    for p in profiles.itertuples(index=False):
        events = by_user.get(p.user_id, given.iloc[:0])
        recent = [Interaction(int(e.item_id), None if pd.isna(e.rating) else float(e.rating),
                              pd.Timestamp(e.event_timestamp).to_pydatetime())
                  for e in events.itertuples(index=False)]  # fmt: skip
        now = max((e.timestamp for e in recent if e.timestamp is not None), default=None)
        row = cold_start_row(
            age=None if pd.isna(p.age) else int(p.age),
            gender=None if pd.isna(p.gender) else str(p.gender),
            occupation=None if pd.isna(p.occupation) else str(p.occupation),
            zip_code=None if pd.isna(p.zip_code) else str(p.zip_code),
            recent=recent, item_genres=genres, recent_items=recent_items, now=now,
        )  # fmt: skip
        # None: the unknown-user slot, as a POST
        arrays.append(rows.arrays(None, row, None if now is None else now.timestamp()))
    return {k: torch.from_numpy(np.concatenate([a[k] for a in arrays])) for k in arrays[0]}


def _split_groups(
    metrics: dict[str, np.ndarray], warm: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for group, mask in ((WARM, warm), (COLD, ~warm)):
        if mask.any():
            out[group] = {name: values[mask] for name, values in metrics.items()}
    return out


def _two_tower(
    source: Any, cfg: BacktestConfig, parallel: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """``towers.release``'s protocol: temperature, recency weight, epochs and popularity
    prior chosen on validation, then the refit on train + validation for those epochs
    (``parallel``: settings.train_in_parallel). Returns (refit, its data, its choices)."""
    from contextlib import nullcontext

    from towers.config import TowerConfig
    from towers.data import tower_data
    from towers.parallel import RefitAhead, beside
    from towers.train import train
    from towers.tuning import prior_key, tune

    tcfg = replace(TowerConfig(), epochs=cfg.max_epochs, seed=cfg.seed)
    if cfg.item_id_dropout is not None:
        tcfg = replace(tcfg, item_id_dropout=cfg.item_id_dropout)
    data = tower_data(source, ("train", "val"), tcfg.history)
    # With a core to spare, the probes train two at a time and the refit starts beside the
    # tuning's leader (towers.parallel: the same weights).
    parallel = beside(parallel)
    with RefitAhead(data) if parallel else nullcontext() as ahead:
        best, tried, priors = tune(tcfg, tower_data(source, ("train",), tcfg.history),
                                   cfg.temperatures, progress=False, parallel=parallel,
                                   on_leader=ahead.start if ahead else None)  # fmt: skip
        final = (ahead.result(best.config, best.best_epoch) if ahead else None) or train(
            best.config, data, progress=False, epochs=best.best_epoch)  # fmt: skip
    choice = {"temperature": best.config.temperature, "best_epoch": best.best_epoch,
              "recency_half_life_days": best.config.recency_half_life_days,
              "popularity_prior": prior_key(best.config.popularity_prior,
                                            best.config.popularity_feature),
              f"val_recall@{tcfg.select_k}": tried,
              f"val_recall@{tcfg.select_k} by prior": priors,
              "training_rows": len(data.train_items["item"])}  # fmt: skip
    return final, data, choice


def _score(
    fns: dict[str, tuple[ScoreFn, ScoreFn | None]], test: EvalSplit, new: EvalSplit,
    cfg: BacktestConfig,
) -> dict[str, dict[str, dict[str, np.ndarray]]]:  # fmt: skip
    """model -> group -> metric -> (users,) from (test split scores, new-user scores)."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name, (on_test, on_new) in fns.items():
        out[name] = _split_groups(per_user_metrics(on_test, test, cfg.ks), test.warm)
        if on_new is not None:
            out[name][cfg.new_group] = per_user_metrics(on_new, new, cfg.ks)
    return out


def _reach_models(
    fns: dict[str, tuple[ScoreFn, ScoreFn | None]], choices: dict[str, Any], final: Any,
    data: Any,
) -> dict[str, ScoreFn]:  # fmt: skip
    """Full-catalogue score functions of the test users whose reach of the new items is
    measured: the two-tower (the oracle), the baseline chosen on validation, and the
    two-tower without its popularity prior (a new item has no count: the prior ranks it
    below every counted item)."""
    from towers.train import tower_scores

    out = {name: fns[name][0] for name in (TWO_TOWER, ORACLE) if name in fns}
    if choices["validation recall@20"]:
        best = best_of(choices["validation recall@20"])
        out[best] = fns[best][0]
    cfg = final.model.cfg
    if cfg.popularity_prior:
        final.model.set_config(replace(cfg, popularity_prior=0.0))
        assert data.test is not None
        out[f"{TWO_TOWER} without prior"] = tower_scores(final.model, data.test.users,
                                                         data.test.items)  # fmt: skip
        final.model.set_config(cfg)  # tower_scores embedded both towers already
    return out


def run_cut(
    window: Window, dataset: Path, folder: Path, cfg: BacktestConfig,
    truth: Any = None, step: Progress | None = None,
) -> CutResult:  # fmt: skip
    """The pipeline as of ``window.cut`` in ``folder`` (emptied first), then every model
    scored on every group of the window's test users."""
    from recsys.pipeline import build
    from recsys.settings import settings_from
    from towers.baseline_scores import baselines
    from towers.data import load_source
    from towers.train import tower_scores

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def done(name: str, what: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        if step is not None:
            step(f"  {name:<10} {seconds[name]:7.1f} s  {what}")

    shutil.rmtree(folder, ignore_errors=True)
    settings = settings_from(data_dir=folder, dataset=str(dataset), val_start=window.val_start,
                             test_start=window.cut, as_of=window.end)  # fmt: skip
    rows = build(settings, materialize_online=False).training_set.rows
    done("build", "training set " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    source = load_source(settings, with_test=True)
    final, data, choice = _two_tower(source, cfg, settings.train_in_parallel)
    done("two-tower", f"temperature {choice['temperature']:g}, {choice['best_epoch']} "
                      "epoch(s), refitted on train + validation")  # fmt: skip

    val, test = source.windows["val"][0], source.windows["test"][0]
    users = pd.read_parquet(settings.paths.dataset / "users.parquet")
    models: dict[str, Any] = {}  # every baseline, fitted with its validation choices
    _, choices = baselines(val, test, source.interactions, users, models=models)
    choices[TWO_TOWER] = choice
    done("baselines", ", ".join(models))

    new, given = new_user_split(source.interactions, source.item_ids, test, cfg.new_user_history)
    has_new = len(new.user_ids) > 0
    assert data.test is not None
    items = data.test.items  # the catalogue's features as of the cut
    fns: dict[str, tuple[ScoreFn, ScoreFn | None]] = {}
    profiles = users.set_index("user_id").loc[new.user_ids].reset_index()
    batch = cold_start_batch(final.encoder, profiles, given, settings.paths.dataset
                             / "items.parquet", settings.recent_items) if has_new else None  # fmt: skip
    fns[TWO_TOWER] = (tower_scores(final.model, data.test.users, items),
                      tower_scores(final.model, batch, items) if batch is not None else None)  # fmt: skip
    for name, model in models.items():
        fold = getattr(model, "fold_in_fn", model.score_fn)  # history models read `seen`
        fns[name] = (model.score_fn(test), fold(new) if has_new else None)
    if truth is not None:
        from recsys.datasets.planted import planted_affinity

        def oracle(split: EvalSplit) -> ScoreFn:
            return lambda rows: planted_affinity(truth, split.user_ids[rows], split.item_ids)

        fns[ORACLE] = (oracle(test), oracle(new) if has_new else None)
    per_user = _score(fns, test, new, cfg)
    counts = {g: len(next(iter(m.values()))) for g, m in per_user[TWO_TOWER].items()}
    done("score", ", ".join(f"{g} {n}" for g, n in counts.items()))

    on_new, choices[CONTENT], info = new_items_cut(source, final.encoder.columns.item_genres,
                                                   _reach_models(fns, choices, final, data),
                                                   cfg.ks)  # fmt: skip
    for name, metrics in on_new.items():
        per_user.setdefault(name, {})[NEW_ITEMS] = metrics
    done("new items", f"{info['items']} item(s), {info['users']} user(s), reach@20 "
                      + ", ".join(f"{m} {v:.2f}" for m, v in info["reach@20"].items()))  # fmt: skip
    return CutResult(window, per_user, choices, seconds, info)
