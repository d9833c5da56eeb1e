"""Rolling-origin backtest: the pipeline's model and baselines re-run as of several cuts.

One test window says little: on MovieLens-100K its ~170 users carry about ±0.03 of noise in
recall@20, as much as the margins between models. So the whole pipeline is replayed as of
each cut (by default the 50th-90th percentiles of the event times): cut ``i``'s test window
is ``[cut_i, cut_{i+1})``, the last one ``[cut_n, end]``, and its validation window holds
as many events as the test window (``val_share``), ending at the cut. For every cut,
*everything* comes from events before it, through the code ``recsys pipeline`` runs:
``recsys.pipeline.build`` in a folder of its own (features as of each row, the
point-in-time training set split train < val_start <= val < cut <= test < window end), then
``towers.release``: temperature and epochs chosen on validation (``tune``), a refit on
train + validation for those epochs (the model "as of its cut"), every baseline's choices
made on validation (``baselines``). Everything is scored by ``towers.evaluate``.

Groups of test users: ``warm`` (seen before the cut), ``cold`` (first seen after it: the
profile only), and ``new after N``: users first seen after the cut with more than N events
in the window, whose first N events are given as history through the cold-start request's
path (``recsys.features.online.cold_start_row``, encoded by ``recsys.features.row_encoding`` as a
``POST`` is) and who are scored on the rest of their window; EASE and ItemKNN fold those N
events in as the user's history. On planted-factor synthetic data the planted ranking is
scored too (the oracle). ``new items``: the items first taken after the cut, ranked among
themselves for the users who take them, against content baselines (genre popularity, the
user's genre affinity) chosen on validation, and each new item's reach
(``evaluation.backtest_new_items``). One cut: ``evaluation.backtest_cut``; summaries, files and plot:
``evaluation.backtest_report``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from towers.evaluate import to_utc

TWO_TOWER = "two-tower"
ORACLE = "oracle (planted factors)"
WARM, COLD = "warm", "cold"
NEW_ITEMS = "new items"  # evaluation.backtest_new_items: items first taken after the cut
# The new items' baseline: genre popularity or genre affinity, as validation chose per window.
CONTENT = "genre baseline"
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
    # The item tower's id-dropout (what teaches it to embed an unknown id from content);
    # None: towers.config.TowerConfig's. For ablations (benchmarks/ablation_new_items.py).
    item_id_dropout: float | None = None
    resamples: int = 1000  # bootstrap resamples of the users of each window
    ks: tuple[int, ...] = (10, 20, 50)

    @property
    def new_group(self) -> str:
        return f"new after {self.new_user_history}"

    @property
    def groups(self) -> tuple[str, ...]:
        return (WARM, COLD, self.new_group, NEW_ITEMS)


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
    # The window's new items: counts, and each model's reach (evaluation.backtest_new_items)
    new_items: dict[str, Any] = field(default_factory=dict)


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
    from recsys.datasets.planted import planted_truth
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
    from evaluation.backtest_cut import run_cut
    from evaluation.backtest_report import summarize, write_report
    from recsys.features.build import default_as_of

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
    from evaluation.backtest_report import best_baseline

    parts = []
    for group in cfg.groups:
        means = {m: float(g[group]["recall@20"].mean()) for m, g in result.per_user.items()
                 if group in g}  # fmt: skip
        best = best_baseline(means)
        if TWO_TOWER in means and best is not None:
            parts.append(f"{group} {means[TWO_TOWER]:.3f} vs {best} {means[best]:.3f}")
    reach = result.new_items.get("reach@20", {})
    if reach:
        parts.append("new items' reach@20 " + ", ".join(f"{m} {v:.2f}" for m, v in reach.items()))
    w = result.window
    return (f"✓ cut {w.index}/{n} [{w.cut:%Y-%m-%d}, {w.end:%Y-%m-%d}) "
            f"{result.seconds['wall']:.1f} s  recall@20 two-tower vs best baseline: "
            + "; ".join(parts))  # fmt: skip
