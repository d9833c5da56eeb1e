"""A saved two-tower version scored again on another window: what the quality gate needs
to compare a candidate with the current version on the same users (``recsys.gate``).

The window is one of ``towers.data.load_source``'s (its ``EvalSplit`` and the users' and
items' Feast features as of its start); each checkpoint encodes those features with its own
encoder (users or items it never saw get its unknown index, as online), and is scored
through ``towers.evaluate.per_user_metrics``, the code every model and baseline goes through.
No Dagster here: ``python -c`` or a notebook can call it on any data folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from towers.data import EvalWindow, TowerSource
from towers.evaluate import per_user_metrics
from towers.model import logits
from towers.train import embed, load_checkpoint


def window_for(checkpoint: Path, source: TowerSource, name: str = "test") -> tuple[Any, EvalWindow]:
    """(model, the window encoded by the checkpoint's own encoder)."""
    if name not in source.windows:
        raise ValueError(f"the source has no {name!r} window (has {sorted(source.windows)}); "
                         "load it with with_test=True")  # fmt: skip
    model, encoder, _ = load_checkpoint(Path(checkpoint))
    split, users, items = source.windows[name]
    return model, EvalWindow(split, encoder.encode_users(users), encoder.encode_items(items))


def per_user_scores(
    checkpoint: Path, source: TowerSource, name: str = "test", ks: tuple[int, ...] = (10, 20, 50)
) -> dict[str, np.ndarray]:
    """``{"recall@K": (U,), "ndcg@K": (U,)}`` of the checkpoint on window ``name``, rows
    aligned with that window's ``split.user_ids``."""
    model, window = window_for(checkpoint, source, name)
    with torch.no_grad():
        users = embed(model.user_tower, window.users)  # (U, d)
        items = embed(model.item_tower, window.items)  # (N, d)

    def scores(block: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return logits(users[torch.from_numpy(block)], items, model.cfg).numpy()  # (B, N)

    return per_user_metrics(scores, window.split, ks)


def gate_on_one_window(
    settings: Any, reg: Any, candidate: str, current: str | None, metrics: dict[str, Any],
    resamples: int = 1000,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The quality gate of ``candidate`` (a version of ``reg``, a ``recsys.registry.
    ModelRegistry``) on its test window, the latest: when a two-tower version is current,
    its checkpoint is scored again on that window and both are compared user by user
    (``recsys.gate.quality_gate``). Returns (the decision, metadata: both versions'
    recall@20 on the window, and the current one's as stored when it was built)."""
    from recsys.gate import METRIC, quality_gate
    from towers.data import load_source

    current_checkpoint = reg.path(current) / "checkpoint.pt" if current else None
    if current_checkpoint is None or not current_checkpoint.exists():
        # Nothing current, or a fallback (a baseline): the popularity rule is the whole gate.
        return quality_gate(metrics), {"current": current or "none"}
    source = load_source(settings, with_test=True)
    ours = per_user_scores(reg.path(candidate) / "checkpoint.pt", source)[METRIC]
    theirs = per_user_scores(current_checkpoint, source)[METRIC]
    stored = reg.metrics(current).get("models", {}).get("two-tower (softmax)", {})
    judged = {
        "current": current,
        f"candidate_{METRIC}_on_window": round(float(ours.mean()), 4),
        f"current_{METRIC}_on_window": round(float(theirs.mean()), 4),
        f"current_{METRIC}_as_stored": stored.get("all", {}).get(METRIC),
    }
    return quality_gate(metrics, ours, theirs, current, resamples), judged
