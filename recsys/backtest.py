"""Rolling-origin backtest: the pipeline's model and baselines re-run as of several cuts.

One test window says little: on MovieLens-100K its ~170 users carry about ±0.03 of noise in
recall@20, as much as the margins between models. So the whole pipeline is replayed as of
each cut (by default the 50th-90th percentiles of the event times): cut ``i``'s test window
is ``[cut_i, cut_{i+1})``, the last one ``[cut_n, end]``, and its validation window holds
as many events as the test window (``val_share``), ending at the cut. For every cut,
*everything* comes from events before it, through the code ``recsys pipeline`` runs:
``recsys.pipeline.build`` in a folder of its own (features as of each row, the
point-in-time training set split train < val_start <= val < cut <= test < window end), then
``towers.compare``: temperature and epochs chosen on validation (``tune``), a refit on
train + validation for those epochs (the model "as of its cut"), every baseline's choices
made on validation (``baselines``). Everything is scored by ``towers.evaluate``.

Groups of test users: ``warm`` (seen before the cut), ``cold`` (first seen after it: the
profile only), and ``new after N``: users first seen after the cut with more than N events
in the window, whose first N events are given as history through the cold-start request's
path (``serving.features.cold_start_row``, encoded by ``serving.encoding.RowEncoder`` as a
``POST`` is) and who are scored on the rest of their window; EASE and ItemKNN fold those N
events in as the user's history. On planted-factor synthetic data the planted ranking is
scored too (the oracle). Summaries, files and plot: ``recsys.backtest_report``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from towers.evaluate import EvalSplit, ScoreFn, item_index, per_user_metrics, to_utc

log = logging.getLogger(__name__)

TWO_TOWER = "two-tower"
ORACLE = "oracle (planted factors)"
WARM, COLD = "warm", "cold"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BacktestConfig:
    # Cuts as quantiles of the event timestamps ...
    quantiles: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    # ... or explicit cut times (UTC), which take precedence when given.
    cut_times: tuple[datetime, ...] | None = None
    # Events in each validation window, as a multiple of its test window's (ending at the cut).
    val_share: float = 1.0
    # New users: the first this many window events are their history, the rest is scored.
    new_user_history: int = 5
    # Seeds training (towers.config.TowerConfig.seed) and the bootstrap.
    seed: int = 0
    # The two-tower: the most epochs a run may take, temperatures tried on validation (the
    # pipeline's defaults, orchestration.resources.PipelineSettings).
    max_epochs: int = 30
    temperatures: tuple[float, ...] = (0.05, 1.0)
    resamples: int = 1000  # bootstrap resamples of the users of each window
    ks: tuple[int, ...] = (10, 20, 50)

    @property
    def new_group(self) -> str:
        return f"new after {self.new_user_history}"

    @property
    def groups(self) -> tuple[str, ...]:
        return (WARM, COLD, self.new_group)


@dataclass(frozen=True)
class Window:
    """One cut: validation ``[val_start, cut)``, test ``[cut, end)``."""

    index: int  # 1-based
    val_start: pd.Timestamp
    cut: pd.Timestamp
    end: pd.Timestamp
    val_events: int
    test_events: int

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "val_start": str(self.val_start), "cut": str(self.cut),
                "end": str(self.end), "val_events": self.val_events,
                "test_events": self.test_events}  # fmt: skip


@dataclass
class CutResult:
    """Per-user metrics of every model on every group of one window, and what was chosen."""

    window: Window
    # model -> group -> metric -> (users,) values; a group without users has no entry
    per_user: dict[str, dict[str, dict[str, np.ndarray]]]
    choices: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _us(when: pd.Timestamp) -> np.datetime64:
    return np.datetime64(when.tz_localize(None), "us")


def plan_windows(when: pd.Series, end: Any, cfg: BacktestConfig) -> list[Window]:
    """The cuts and windows over these event times; ``end`` closes the last test window."""
    # (E,) naive UTC datetime64[us], sorted
    ts = np.sort(pd.to_datetime(when, utc=True).dt.tz_localize(None).to_numpy("datetime64[us]"))
    end = to_utc(end)
    if len(ts) < 2:
        raise ValueError("the dataset needs events to cut")
    if cfg.cut_times:
        cuts = [to_utc(t) for t in cfg.cut_times]
    else:
        if not all(0 < q < 1 for q in cfg.quantiles):
            raise ValueError(f"quantiles must be in (0, 1), got {cfg.quantiles}")
        cuts = [to_utc(ts[min(int(q * len(ts)), len(ts) - 1)]) for q in cfg.quantiles]
    if not cuts or any(a >= b for a, b in zip(cuts, cuts[1:], strict=False)) or cuts[-1] >= end:
        raise ValueError(f"cuts must increase and end before {end}, got {[str(c) for c in cuts]}")
    windows = []
    for i, cut in enumerate(cuts):
        stop = cuts[i + 1] if i + 1 < len(cuts) else end
        pos = int(np.searchsorted(ts, _us(cut), "left"))
        n_test = int(np.searchsorted(ts, _us(stop), "left")) - pos
        n_val = max(1, round(cfg.val_share * n_test))
        if n_test < 1 or pos - n_val < 1:
            raise ValueError(f"cut {cut}: {n_test} test events and {pos} before it; a window "
                             f"needs events, and {n_val} validation events need training "
                             "events before them (move the cut or lower val_share)")  # fmt: skip
        val_start = to_utc(ts[pos - n_val])
        n_val = pos - int(np.searchsorted(ts, _us(val_start), "left"))
        windows.append(Window(i + 1, val_start, cut, stop, n_val, n_test))
    return windows


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
    ``POST`` builds them (serving.features.cold_start_row, serving.encoding.RowEncoder)."""
    from serving.encoding import RowEncoder
    from serving.features import Interaction, ItemGenres, cold_start_row

    genres = ItemGenres.from_items(items_path, encoder.genres)
    rows = RowEncoder(encoder)
    by_user = dict(iter(given.groupby("user_id")))
    arrays = []
    for p in profiles.itertuples(index=False):
        events = by_user.get(p.user_id, given.iloc[:0])
        recent = [Interaction(int(e.item_id), None if pd.isna(e.rating) else float(e.rating),
                              pd.Timestamp(e.event_timestamp).to_pydatetime())
                  for e in events.itertuples(index=False)]  # fmt: skip
        row = cold_start_row(
            age=None if pd.isna(p.age) else int(p.age),
            gender=None if pd.isna(p.gender) else str(p.gender),
            occupation=None if pd.isna(p.occupation) else str(p.occupation),
            zip_code=None if pd.isna(p.zip_code) else str(p.zip_code),
            recent=recent, item_genres=genres, recent_items=recent_items,
        )  # fmt: skip
        arrays.append(rows.arrays(None, row))  # None: the unknown-user slot, as a POST
    return {k: torch.from_numpy(np.concatenate([a[k] for a in arrays])) for k in arrays[0]}


def _tower_fn(
    model: Any, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
) -> ScoreFn:
    from towers.model import logits
    from towers.train import embed

    u, v = embed(model.user_tower, users), embed(model.item_tower, items)  # (U, d), (N, d+1)
    return lambda rows: logits(u[torch.from_numpy(rows)], v, model.cfg).numpy()  # (B, N)


def _baseline_models(
    choices: dict[str, Any], interactions: pd.DataFrame, users: pd.DataFrame, test: EvalSplit
) -> dict[str, Any]:
    """Every baseline ``towers.compare.baselines`` scored, fitted again with its choices on
    the events before the test window (the per-user metrics need the models)."""
    from towers.baselines import Popularity
    from towers.ease import EASE, default_memory_budget
    from towers.itemknn import ItemKNN
    from towers.segments import SEGMENTATIONS, SegmentPopularity

    item_ids = test.item_ids
    before = interactions[interactions.event_timestamp < test.start]
    models: dict[str, Any] = {"popularity": Popularity().fit(before, item_ids)}
    days = choices["popularity (recent)"]["window_days"]
    models["popularity (recent)"] = Popularity(days).fit(before, item_ids, before=test.start)
    ease = choices["EASE"]
    if "l2" in ease:
        top = ease["items_modelled"] if ease["items_modelled"] < len(item_ids) else None
        models["EASE"] = EASE(ease["l2"], default_memory_budget(), top).fit(before, item_ids)
    knn = choices["ItemKNN"]
    models["ItemKNN"] = ItemKNN(knn["neighbours"], knn["shrink"]).fit(before, item_ids)
    if "segmentation" in choices["segment popularity"]:
        by = SEGMENTATIONS[choices["segment popularity"]["segmentation"]]
        models["segment popularity"] = SegmentPopularity(by).fit(before, users, item_ids)
    return models


def _split_groups(
    metrics: dict[str, np.ndarray], warm: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for group, mask in ((WARM, warm), (COLD, ~warm)):
        if mask.any():
            out[group] = {name: values[mask] for name, values in metrics.items()}
    return out


def run_cut(
    window: Window, dataset: Path, folder: Path, cfg: BacktestConfig,
    truth: Any = None, step: Progress | None = None,
) -> CutResult:  # fmt: skip
    """The pipeline as of ``window.cut`` in ``folder`` (emptied first), then every model
    scored on every group of the window's test users."""
    from recsys.pipeline import build
    from recsys.settings import settings_from
    from towers.compare import baselines, tune
    from towers.config import TowerConfig
    from towers.data import load_source, tower_data
    from towers.train import train

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def done(name: str, what: str = "") -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        if step is not None:
            step(f"  {name:<12} {seconds[name]:7.1f} s  {what}")

    shutil.rmtree(folder, ignore_errors=True)
    settings = settings_from(data_dir=folder, dataset=str(dataset), val_start=window.val_start,
                             test_start=window.cut, as_of=window.end)  # fmt: skip
    built = build(settings, materialize_online=False)
    done(
        "build",
        "training-set rows " + ", ".join(f"{k} {v:,}" for k, v in built.training_set.rows.items()),
    )

    tcfg = replace(TowerConfig(), epochs=cfg.max_epochs, seed=cfg.seed)
    source = load_source(settings, with_test=True)
    data = tower_data(source, ("train",), tcfg.history)
    best, tried = tune(tcfg, data, cfg.temperatures, progress=False)
    done("tune", f"temperature {best.config.temperature:g}, epoch {best.best_epoch}")
    final_data = tower_data(source, ("train", "val"), tcfg.history)
    final = train(best.config, final_data, progress=False, epochs=best.best_epoch)
    done("refit", f"{best.best_epoch} epoch(s) on train + validation")

    assert data.val is not None and final_data.test is not None
    test = final_data.test.split
    users = pd.read_parquet(settings.paths.dataset / "users.parquet")
    _, choices = baselines(data.val.split, test, source.interactions, users)
    models = _baseline_models(choices, source.interactions, users, test)
    done("baselines", ", ".join(models))
    choices[TWO_TOWER] = {"temperature": best.config.temperature, "best_epoch": best.best_epoch,
                          f"val_recall@{tcfg.select_k}": {f"{t:g}": v for t, v in tried.items()},
                          "training_rows": len(final_data.train_items["item"])}  # fmt: skip

    new, given = new_user_split(source.interactions, source.item_ids, test, cfg.new_user_history)
    profiles = users.set_index("user_id").loc[new.user_ids].reset_index()
    fns: dict[str, tuple[ScoreFn, ScoreFn | None]] = {
        TWO_TOWER: (
            _tower_fn(final.model, final_data.test.users, final_data.test.items),
            _tower_fn(final.model, cold_start_batch(final.encoder, profiles, given,
                      settings.paths.dataset / "items.parquet", settings.recent_items),
                      final_data.test.items) if len(new.user_ids) else None,
        ),
    }  # fmt: skip
    for name, model in models.items():
        fold = getattr(model, "fold_in_fn", model.score_fn)  # history models read `seen`
        fns[name] = (model.score_fn(test), fold(new) if len(new.user_ids) else None)
    if truth is not None:
        from recsys.datasets.synthetic import planted_affinity

        def oracle(split: EvalSplit) -> ScoreFn:
            return lambda rows: planted_affinity(truth, split.user_ids[rows], split.item_ids)

        fns[ORACLE] = (oracle(test), oracle(new) if len(new.user_ids) else None)
    per_user: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name, (on_test, on_new) in fns.items():
        per_user[name] = _split_groups(per_user_metrics(on_test, test, cfg.ks), test.warm)
        if on_new is not None:
            per_user[name][cfg.new_group] = per_user_metrics(on_new, new, cfg.ks)
    counts = {g: len(next(iter(m.values()))) for g, m in per_user[TWO_TOWER].items()}
    done("score", ", ".join(f"{g} {n}" for g, n in counts.items()))
    return CutResult(window, per_user, choices, seconds)


def canonical_dataset(dataset: str, out: Path, synthetic_interactions: int | None = None,
                      synthetic_seed: int | None = None) -> Path:  # fmt: skip
    """A canonical dataset folder to replay: ``dataset`` itself when it is one, else the
    configured source ingested once into ``out/source`` (never the pipeline's data folder)."""
    from recsys.dataset import ensure_dataset
    from recsys.settings import settings_from

    folder = Path(dataset).expanduser()
    if all((folder / f"{t}.parquet").exists() for t in ("users", "items", "interactions")):
        return folder.resolve()
    settings = settings_from(data_dir=out / "source", dataset=dataset,
                             synthetic_interactions=synthetic_interactions,
                             synthetic_seed=synthetic_seed)  # fmt: skip
    ensure_dataset(settings)
    return settings.paths.dataset


def oracle_truth(dataset: str, folder: Path, synthetic_interactions: int | None = None,
                 synthetic_seed: int | None = None) -> Any:  # fmt: skip
    """The planted factors when the dataset is synthetic (its ``synthetic_truth.npz``, or
    rebuilt from the size and seed), else None."""
    from recsys.datasets.synthetic import planted_truth
    from recsys.settings import settings_from

    if (folder / "synthetic_truth.npz").exists():
        return dict(np.load(folder / "synthetic_truth.npz"))
    if dataset != "synthetic":
        return None
    s = settings_from(synthetic_interactions=synthetic_interactions, synthetic_seed=synthetic_seed)
    return planted_truth(s.synthetic_interactions, seed=s.synthetic_seed)


def run_backtest(
    dataset: Path, out: Path, cfg: BacktestConfig, truth: Any = None,
    progress: Progress | None = None, step: Progress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every cut of ``dataset`` (a canonical folder), per-cut folders under ``out/cuts``;
    writes ``backtest.json``/``.md``/``.png`` into ``out`` and returns the JSON's content."""
    from recsys.backtest_report import summarize, write_report
    from recsys.features import default_as_of

    started = time.perf_counter()
    events = pd.read_parquet(dataset / "interactions.parquet", columns=["event_timestamp"])
    windows = plan_windows(events["event_timestamp"], default_as_of(dataset), cfg)
    results = []
    for w in windows:
        if step is not None:
            step(f"cut {w.index}/{len(windows)}: validation from {w.val_start}, test "
                 f"[{w.cut}, {w.end}), {w.test_events:,} events")  # fmt: skip
        t = time.perf_counter()
        result = run_cut(w, dataset, out / "cuts" / f"cut{w.index}", cfg, truth, step)
        result.seconds["wall"] = round(time.perf_counter() - t, 2)
        results.append(result)
        if progress is not None:
            progress(_cut_line(result, len(windows), cfg))
    summary = summarize(results, cfg, str(dataset), truth is not None)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_report(summary, out)
    return summary


def _cut_line(result: CutResult, n: int, cfg: BacktestConfig) -> str:
    """``✓ cut 2/5 [1998-01-13, 1998-02-09) 76.5 s  recall@20 two-tower vs best baseline:
    warm 0.142 vs EASE 0.149; ...``: the progress line of a finished cut."""
    from recsys.backtest_report import best_baseline

    parts = []
    for group in cfg.groups:
        means = {m: float(g[group]["recall@20"].mean()) for m, g in result.per_user.items()
                 if group in g}  # fmt: skip
        if TWO_TOWER in means:
            best = best_baseline(means)
            parts.append(f"{group} {means[TWO_TOWER]:.3f} vs {best} {means[best]:.3f}")
    w = result.window
    return (f"✓ cut {w.index}/{n} [{w.cut:%Y-%m-%d}, {w.end:%Y-%m-%d}) "
            f"{result.seconds['wall']:.1f} s  recall@20 two-tower vs best baseline: "
            + "; ".join(parts))  # fmt: skip
