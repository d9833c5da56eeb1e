"""The report of models scored on one window: ``metrics.json``, ``metrics.md`` and
``recall_at_k.png``, each model's metrics by segment (``towers.evaluate``)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from towers.evaluate import SEGMENTS


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _markdown(
    results: dict[str, dict[str, dict[str, float]]], title: str, ks: list[int], extra: str = ""
) -> str:
    first = next(iter(results.values()))
    cols = [(seg, f"{m}@{k}") for seg in SEGMENTS for m in ("recall", "ndcg") for k in ks]
    head = ["model"] + [f"{seg} (n={first[seg]['users']}) {name}" for seg, name in cols]
    rows = [[model] + [_cell(r[seg][name]) for seg, name in cols] for model, r in results.items()]
    table = ["| " + " | ".join(row) + " |" for row in [head, ["---"] + ["---:"] * len(cols), *rows]]
    notes = (
        "Recall@K = hits / min(K, |truth|) (Steck, WWW 2019); NDCG@K with binary relevance. "
        "Truth = window items not seen before the window; seen items are not ranked."
    )
    return "\n".join([f"# {title}", "", *table, "", notes, *([extra] if extra else []), ""])


def _plot(results: dict[str, dict[str, dict[str, float]]], title: str, ks: list[int]) -> bytes:
    # The figure is drawn on an Agg canvas directly: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(SEGMENTS), sharey=True)
    first = next(iter(results.values()))
    for ax, segment in zip(axes, SEGMENTS, strict=True):
        for model, metrics in results.items():
            ax.plot(ks, [metrics[segment][f"recall@{k}"] for k in ks], marker="o", label=model)
        ax.set(title=f"{segment} (n={first[segment]['users']})", xlabel="K", xticks=ks)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@K")
    axes[0].set_ylim(bottom=0)
    axes[-1].legend(loc="best")
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN float, at any depth of dicts and lists, replaced by None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def report(
    results: dict[str, dict[str, dict[str, float]]],
    out_dir: Path,
    title: str,
    choices: dict[str, Any] | None = None,
    notes: str = "",
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``recall_at_k.png`` for several models.

    ``results`` maps a model name to its :func:`rank_metrics` output; all models must have
    been scored on the same users. Each file is written to a temporary name and renamed.
    In the JSON (``{"title": ..., "models": results, "choices": choices}``) NaN is written as
    null; ``choices`` (what each model chose on validation) is left out when not given.
    ``notes`` is a markdown paragraph added under the table.
    """
    from recsys.io import atomic_write_bytes

    if not results:
        raise ValueError("results is empty: pass {model name: rank_metrics(...)}")
    counts = {m: tuple(r[s]["users"] for s in SEGMENTS) for m, r in results.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"models were scored on different users (all, warm, cold): {counts}")
    first = next(iter(results.values()))
    ks = sorted(int(name.split("@")[1]) for name in first["all"] if name.startswith("recall@"))
    out_dir = Path(out_dir)
    names = {"json": "metrics.json", "markdown": "metrics.md", "plot": "recall_at_k.png"}
    paths = {kind: out_dir / name for kind, name in names.items()}
    body: dict[str, Any] = {"title": title, "models": results}
    if choices is not None:
        body["choices"] = choices
    payload = json.dumps(_no_nan(body), indent=2, allow_nan=False)
    atomic_write_bytes(paths["json"], payload.encode())
    atomic_write_bytes(paths["markdown"], _markdown(results, title, ks, notes).encode())
    atomic_write_bytes(paths["plot"], _plot(results, title, ks))
    return paths
