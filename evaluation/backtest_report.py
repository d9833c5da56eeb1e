"""The backtest's numbers: per-window means and the mean over windows, each with a 95%
bootstrap interval over users, the best baseline per window and group, and the files
(``backtest.json``, ``backtest.md``, ``backtest.png``) and terminal table that show them.

Intervals resample users *within each window* (windows are fixed, users are the sample):
one window's interval is the percentile interval of its resampled means; the mean over
windows resamples every window at once and averages the windows' resampled means. Each
(model, group) is resampled with the same seed, so all models see the same resampled users
and their intervals are directly comparable. The level and the default number of resamples
are the quality gate's (``recsys.gate``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.backtest import (
    CONTENT,
    NEW_ITEMS,
    ORACLE,
    TWO_TOWER,
    BacktestConfig,
    CutResult,
)
from recsys.gate import LEVEL, Interval

KEY = "recall@20"


def window_bootstrap(
    windows: list[np.ndarray], resamples: int, seed: int, level: float = LEVEL
) -> Interval:
    """Mean over windows of each window's mean per-user value, with a percentile bootstrap
    interval resampling users within each window (``users`` is the total over windows)."""
    windows = [np.asarray(w, dtype=np.float64) for w in windows if len(w)]
    if not windows:
        raise ValueError("no window has users")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)  # (R,)
    for values in windows:
        block = max(1, 2_000_000 // len(values))  # R x U indices at once could be large
        for lo in range(0, resamples, block):
            n = min(block, resamples - lo)
            means[lo : lo + n] += values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    means /= len(windows)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    point = float(np.mean([w.mean() for w in windows]))
    users = sum(len(w) for w in windows)
    return Interval(point, float(low), float(high), users, level, resamples)


def _cell(i: Interval) -> dict[str, float | int]:
    return {"mean": round(i.mean, 6), "low": round(i.low, 6), "high": round(i.high, 6),
            "users": i.users}  # fmt: skip


def best_baseline(means: dict[str, float]) -> str | None:
    """The baseline chosen on validation when the group has one (the new items' content
    baseline), else the baseline with the highest value (neither two-tower nor oracle);
    None without baselines."""
    if CONTENT in means:
        return CONTENT
    baselines = {m: v for m, v in means.items() if m not in (TWO_TOWER, ORACLE)}
    return max(baselines, key=lambda m: baselines[m]) if baselines else None


def _versus(means: dict[str, float]) -> dict[str, Any]:
    best = best_baseline(means)
    if best is None:
        return {}
    out: dict[str, Any] = {"model": best, KEY: round(means[best], 6)}
    if TWO_TOWER in means and means[best] > 0:
        out["two-tower ratio"] = round(means[TWO_TOWER] / means[best], 4)
    return out


def summarize(
    results: list[CutResult], cfg: BacktestConfig, dataset: str, oracle: bool
) -> dict[str, Any]:
    """Everything ``backtest.json`` holds (see the module docstring)."""
    # Models in first-seen order: one that scores only the new items may miss a window.
    models = list(dict.fromkeys(m for r in results for m in r.per_user))
    metrics = [f"{m}@{k}" for m in ("recall", "ndcg") for k in cfg.ks]
    windows: list[dict[str, Any]] = []
    mean: dict[str, dict[str, Any]] = {}
    for r in results:
        cells: dict[str, Any] = {}
        for model, groups in r.per_user.items():
            cells[model] = {g: {name: _cell(window_bootstrap([v[name]], cfg.resamples, cfg.seed))
                                for name in metrics} for g, v in groups.items()}  # fmt: skip
        best = {g: _versus({m: c[g][KEY]["mean"] for m, c in cells.items() if g in c})
                for g in cfg.groups if g in cells[TWO_TOWER]}  # fmt: skip
        windows.append({**r.window.as_dict(), "seconds": r.seconds, "choices": r.choices,
                        "metrics": cells, "best_baseline": best,
                        "new_items": r.new_items})  # fmt: skip
    for model in models:
        mean[model] = {}
        for g in cfg.groups:
            per = [r.per_user[model][g] for r in results if g in r.per_user.get(model, {})]
            if per:
                mean[model][g] = {
                    name: {**_cell(window_bootstrap([p[name] for p in per], cfg.resamples,
                                                    cfg.seed)), "windows": len(per)}
                    for name in metrics
                }  # fmt: skip
    best_mean = {g: _versus({m: mean[m][g][KEY]["mean"] for m in models if g in mean[m]})
                 for g in cfg.groups if g in mean[TWO_TOWER]}  # fmt: skip
    out: dict[str, Any] = {
        "dataset": dataset,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "seed": cfg.seed,
        "groups": list(cfg.groups),
        "models": models,
        "windows": windows,
        "mean": mean,
        "best_baseline_mean": best_mean,
        "new_items_reach_mean": _mean_reach(results),
    }
    if oracle:
        out["oracle_share"] = {
            g: round(mean[TWO_TOWER][g][KEY]["mean"] / mean[ORACLE][g][KEY]["mean"], 4)
            for g in cfg.groups if g in mean[ORACLE] and mean[ORACLE][g][KEY]["mean"] > 0
        }  # fmt: skip
    return out


def _mean_reach(results: list[CutResult]) -> dict[str, float]:
    """Mean over windows of each model's reach@20 of the new items (windows with any)."""
    per: dict[str, list[float]] = {}
    for r in results:
        for model, value in r.new_items.get("reach@20", {}).items():
            if math.isfinite(value):
                per.setdefault(model, []).append(value)
    return {m: round(float(np.mean(v)), 6) for m, v in per.items()}


def _fmt(cell: dict[str, Any] | None, intervals: bool = True) -> str:
    if cell is None:
        return "n/a"
    if not intervals:
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def _in_group(summary: dict[str, Any], group: str) -> list[str]:
    """The models scored on ``group`` in at least one window (the genre baselines score only
    the new items; the others not those)."""
    return [m for m in summary["models"] if group in summary["mean"][m]]


def group_rows(summary: dict[str, Any], group: str, metric: str = KEY) -> list[list[str]]:
    """Header and one row per model: the metric per window, then the mean over windows."""
    n = [w["metrics"][TWO_TOWER].get(group, {}).get(metric, {}).get("users", 0)
         for w in summary["windows"]]  # fmt: skip
    head = ["model"] + [f"w{w['index']} (n={k})" for w, k in zip(summary["windows"], n,
                                                                   strict=True)] + ["mean"]  # fmt: skip
    rows = [head]
    for model in _in_group(summary, group):
        cells = [_fmt(w["metrics"].get(model, {}).get(group, {}).get(metric))
                 for w in summary["windows"]]  # fmt: skip
        rows.append([model, *cells, _fmt(summary["mean"][model].get(group, {}).get(metric))])
    best = [w["best_baseline"].get(group, {}) for w in summary["windows"]]
    overall = summary["best_baseline_mean"].get(group, {})
    rows.append(["two-tower / best baseline"]
                + [f"{b['two-tower ratio']:.2f} ({b['model']})" if "two-tower ratio" in b
                   else "n/a" for b in [*best, overall]])  # fmt: skip
    return rows


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Rolling backtest: {summary['dataset']}", "",
             "| window | validation from | cut | test until | validation events | test events "
             "| seconds |", "| ---: | --- | --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for w in summary["windows"]:
        lines.append(f"| {w['index']} | {w['val_start']} | {w['cut']} | {w['end']} | "
                     f"{w['val_events']:,} | {w['test_events']:,} | {w['seconds']['wall']} |")  # fmt: skip
    for group in summary["groups"]:
        if group not in summary["mean"][TWO_TOWER]:
            continue
        rows = group_rows(summary, group)
        lines += ["", f"## {group}: recall@20, mean [95% interval over users]", "",
                  "| " + " | ".join(rows[0]) + " |",
                  "| --- |" + " ---: |" * (len(rows[0]) - 1)]  # fmt: skip
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        metrics = list(summary["mean"][TWO_TOWER][group])
        lines += ["", f"Mean over windows, every metric ({group}):", "",
                  "| model | " + " | ".join(metrics) + " |",
                  "| --- |" + " ---: |" * len(metrics)]  # fmt: skip
        for model in _in_group(summary, group):
            cells = summary["mean"][model][group]
            lines.append(f"| {model} | " + " | ".join(_fmt(cells.get(m)) for m in metrics) + " |")
    lines += reach_lines(summary)
    if "oracle_share" in summary:
        lines += ["", "Two-tower's share of the oracle's recall@20 (mean over windows): "
                  + ", ".join(f"{g} {v:.0%}" for g, v in summary["oracle_share"].items())]  # fmt: skip
    if NEW_ITEMS in summary["mean"][TWO_TOWER]:
        lines += ["", f"{NEW_ITEMS}: items with no event before the cut taken in the window, "
                  "ranked among themselves for the users who take them; genre baseline: genre "
                  "popularity or genre affinity, as validation chose (recall@20, ties broken by "
                  "NDCG@20) per window."]  # fmt: skip
    lines += ["", "Recall@K = hits / min(K, |truth|); intervals: percentile bootstrap over the "
              "users of each window (towers.evaluate, evaluation.backtest_report).", ""]  # fmt: skip
    return "\n".join(lines)


def reach_lines(summary: dict[str, Any]) -> list[str]:
    """New items per window and their reach@20: the share of them in at least one test
    user's full-catalogue top 20, per model (the two-tower, the best full-catalogue baseline
    chosen on validation)."""
    lines = []
    for w in summary["windows"]:
        info = w.get("new_items", {})
        if info:
            lines.append(f"window {w['index']}: {info['items']} new item(s), {info['users']} "
                         "user(s) taking them; reach@20 " + ", ".join(
                             f"{m} {v:.2f}" for m, v in info["reach@20"].items()))  # fmt: skip
    if summary.get("new_items_reach_mean"):
        lines.append("new items' reach@20, mean over windows: " + ", ".join(
            f"{m} {v:.2f}" for m, v in summary["new_items_reach_mean"].items()))  # fmt: skip
    return ["", *lines] if lines else []


def plot(summary: dict[str, Any]) -> bytes:
    """Recall@20 per window per model with its interval, one panel per group."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [g for g in summary["groups"] if g in summary["mean"][TWO_TOWER]]
    fig = Figure(figsize=(5 * len(groups) + 2, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True))
    for ax, group in zip(axes, groups, strict=True):
        models = _in_group(summary, group)
        for j, model in enumerate(models):
            xs: list[float] = []
            ys: list[float] = []
            err: list[list[float]] = [[], []]  # below, above the mean
            for w in summary["windows"]:
                cell = w["metrics"].get(model, {}).get(group, {}).get(KEY)
                if cell is None:
                    continue
                xs.append(w["index"] + (j - (len(models) - 1) / 2) * 0.08)
                ys.append(cell["mean"])
                err[0].append(cell["mean"] - cell["low"])
                err[1].append(cell["high"] - cell["mean"])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=model,
                        linewidth=2.2 if model == TWO_TOWER else 1.0)  # fmt: skip
        ax.set(title=group, xlabel="window", xticks=[w["index"] for w in summary["windows"]])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@20 (95% interval)")
    axes[0].set_ylim(bottom=0)
    legend = {label: handle for ax in axes for handle, label in zip(
        *ax.get_legend_handles_labels(), strict=True)}  # fmt: skip
    fig.legend(legend.values(), legend.keys(), loc="outside right upper", fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def write_report(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """``backtest.json``, ``backtest.md`` and ``backtest.png`` in ``out``, each written to a
    temporary name and renamed."""
    from recsys.io import atomic_write_bytes

    paths = {"json": out / "backtest.json", "markdown": out / "backtest.md",
             "plot": out / "backtest.png"}  # fmt: skip
    body = json.dumps(_no_nan(summary), indent=2, default=str, allow_nan=False)
    atomic_write_bytes(paths["json"], body.encode())
    atomic_write_bytes(paths["markdown"], markdown(summary).encode())
    atomic_write_bytes(paths["plot"], plot(summary))
    return paths


def table(summary: dict[str, Any]) -> str:
    """The terminal table: recall@20 per window and mean with intervals, per group."""
    out = []
    for group in summary["groups"]:
        if group not in summary["mean"][TWO_TOWER]:
            out.append(f"{group}: no users in any window")
            continue
        rows = group_rows(summary, group)
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        out.append(f"{group} — recall@20 [95% interval]")
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out += reach_lines(summary)
    if "oracle_share" in summary:
        out.append("two-tower / oracle recall@20 (mean over windows): "
                   + ", ".join(f"{g} {v:.0%}" for g, v in summary["oracle_share"].items()))  # fmt: skip
    out.append(f"wall time {summary.get('wall_seconds', 0):.0f} s")
    return "\n".join(out)


def recall_metadata(summary: dict[str, Any]) -> dict[str, float]:
    """Mean recall@20 over windows per model and group (``backtest_recall@20/<model>/<group>``)."""
    return {f"backtest_{KEY}/{model}/{group}": cells[KEY]["mean"]
            for model, groups in summary["mean"].items()
            for group, cells in groups.items()}  # fmt: skip
