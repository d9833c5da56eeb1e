"""A saved two-tower version scored again on another window: what the quality gate needs
to compare a candidate with the current version on the same users (``recsys.gate``; the
gate on one window, with the registry, is ``evaluation.gate_window``).

The window is one of ``towers.data.load_source``'s (its ``EvalSplit`` and the users' and
items' Feast features as of its start); each checkpoint encodes those features with its own
encoder (users or items it never saw get its unknown index, as online), and is scored
through ``towers.evaluate.per_user_metrics``, the code every model and baseline goes through.

Which checkpoint is re-scored. A version serves ``checkpoint.pt``, refit on every event
before its own ``as_of``; the next version's test window starts before that ``as_of``
whenever few events arrived in between (30 new events move the cuts by minutes), so the
served checkpoint has already seen the window's events it would be scored on: a leak that
favours the current version. The gate re-scores the version's *evaluated* checkpoint
instead, ``checkpoint_eval.pt``, trained without its own test window (version.json's
``evaluated`` says on which rows and up to which event), and only when that model's last
training event is before the window's start; otherwise the current version is not compared
and the verdict says why (rule 1 still applies). A version from before the refit has no
``checkpoint_eval.pt``: its ``checkpoint.pt`` is the model it evaluated, trained on the
train split, and is re-scored. The candidate is scored through its evaluated checkpoint
too, so both are models that never saw the window.
No Dagster here: ``python -c`` or a notebook can call it on any data folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from towers.checkpoint import load_checkpoint
from towers.data import EvalWindow, TowerSource, item_tensors, user_tensors
from towers.evaluate import per_user_metrics
from towers.train import tower_scores


def window_for(checkpoint: Path, source: TowerSource, name: str = "test") -> tuple[Any, EvalWindow]:
    """(model, the window encoded by the checkpoint's own encoder)."""
    if name not in source.windows:
        raise ValueError(f"the source has no {name!r} window (has {sorted(source.windows)}); "
                         "load it with with_test=True")  # fmt: skip
    model, encoder, _ = load_checkpoint(Path(checkpoint))
    split, users, items = source.windows[name]
    return model, EvalWindow(split, user_tensors(encoder, users), item_tensors(encoder, items))


def per_user_of(
    model: Any, window: EvalWindow, ks: tuple[int, ...] = (10, 20, 50)
) -> dict[str, np.ndarray]:
    """``{"recall@K": (U,), "ndcg@K": (U,)}`` of a two-tower on an encoded window, rows
    aligned with ``window.split.user_ids``."""
    return per_user_metrics(tower_scores(model, window.users, window.items), window.split, ks)


def per_user_scores(
    checkpoint: Path, source: TowerSource, name: str = "test", ks: tuple[int, ...] = (10, 20, 50)
) -> dict[str, np.ndarray]:
    """:func:`per_user_of` the checkpoint on window ``name`` of ``source``."""
    return per_user_of(*window_for(checkpoint, source, name), ks)


EVALUATED = "checkpoint_eval.pt"  # the model a version was scored with (module docstring)


def evaluated_checkpoint(folder: Path) -> Path:
    """The checkpoint a version folder was scored with: ``checkpoint_eval.pt``, or, in a
    version from before the all-data refit, ``checkpoint.pt``."""
    path = Path(folder) / EVALUATED
    return path if path.exists() else Path(folder) / "checkpoint.pt"


def read_per_user(folder: Path) -> dict[str, np.ndarray] | None:
    """Per-user test recall@20 of every model of a version (``towers.release.PER_USER``),
    by model name; None for a version that has none."""
    import pandas as pd

    from towers.release import PER_USER

    path = Path(folder) / PER_USER
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    return {name: frame[name].to_numpy(np.float64) for name in frame.columns if name != "user_id"}
