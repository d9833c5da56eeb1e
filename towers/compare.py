"""The honest comparison: two-tower models (one per loss) against popularity and EASE on the
temporal test window, warm and cold users reported apart.

Protocol. Every model chooses what it can on the validation window only: the two-tower
its epoch (early stopping), EASE its λ. Then, for the test window (``test_start`` to
``as_of``): popularity and EASE are fitted on everything before ``test_start`` (train +
validation); the two-tower keeps the weights trained on the training split and reads each
user's features as of ``test_start`` through Feast (its history then includes the
validation weeks, as it would online). Items a user interacted with before ``test_start``
are removed from the ranking (``towers.evaluate``).

    python -m towers compare --losses softmax bce triplet
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from towers.baselines import EASE, Popularity, tune_ease_lambda
from towers.config import TowerConfig
from towers.data import TowerData, load_tower_data
from towers.evaluate import rank_metrics, report
from towers.train import TrainResult, evaluate_window, save_checkpoint, train

log = logging.getLogger(__name__)


def baselines(data: TowerData, interactions: pd.DataFrame) -> dict[str, Any]:
    """Popularity and EASE on the test window; EASE's λ chosen on validation."""
    assert data.test is not None
    val, test = data.val.split, data.test.split
    item_ids = test.item_ids
    before_val = interactions[interactions.event_timestamp < val.start]
    before_test = interactions[interactions.event_timestamp < test.start]
    l2 = tune_ease_lambda(before_val, val, item_ids)
    popularity = Popularity().fit(before_test, item_ids)
    ease = EASE(l2=l2).fit(before_test, item_ids)
    return {
        "popularity": rank_metrics(popularity.score_fn(test), test),
        "EASE": rank_metrics(ease.score_fn(test), test),
        "_ease_l2": l2,
    }


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


def compare(
    settings: Any,
    losses: tuple[str, ...] = ("softmax", "bce", "triplet"),
    base: TowerConfig | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one two-tower per loss, score everything on test, write the report."""
    from recsys.io import atomic_write_bytes

    base = base or TowerConfig()
    out_dir = Path(out_dir or settings.paths.data_dir / "evaluation")
    data = load_tower_data(settings, history=base.history)
    interactions = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    results = baselines(data, interactions)
    l2 = results.pop("_ease_l2")
    runs: dict[str, TrainResult] = {}
    for loss in losses:
        cfg = replace(base, loss=loss)  # type: ignore[arg-type]
        runs[loss] = train(cfg, data, progress=progress)
        assert data.test is not None
        results[f"two-tower ({loss})"] = evaluate_window(runs[loss].model, data.test)
        save_checkpoint(runs[loss], out_dir / f"two_tower_{loss}.pt")
    paths = report(results, out_dir, title=f"test window, {settings.dataset}")
    atomic_write_bytes(out_dir / "training_curves.png", curves_png(runs, base.select_k))
    summary = {
        "results": results,
        "ease_l2": l2,
        "runs": {
            k: {"best_epoch": r.best_epoch, "seconds": r.seconds, "history": r.history}
            for k, r in runs.items()
        },  # fmt: skip
        "files": {k: str(v) for k, v in paths.items()},
    }
    atomic_write_bytes(out_dir / "runs.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
