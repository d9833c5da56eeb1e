"""The fallback version's format, as serving reads it. A fallback is the best servable
baseline, promoted when no two-tower passes the quality gate and nothing is current, so
that a fresh data folder always has something to serve.

A fallback is a registry version like any other (``recsys.registry``: staged → gated →
embedded → promoted, by the run that built it) whose ``version.json`` says ``"kind":
"fallback"`` and names its baseline and why. Its artifacts: ``ranking.parquet`` (every
catalogue item and its scores), ``metrics.json``/``.md`` (the scores of the rejected
two-tower and of every baseline, copied from the candidate: what it was chosen on).

Which baseline. The servable ones (:data:`SERVABLE`): popularity over all history,
popularity over the trailing window chosen on validation, and popularity within the user's
profile segment (the segmentation chosen on validation). The one with the best
*validation* recall@20 over all users is served (``towers.baseline_scores.baselines`` records each
baseline's at its chosen setting); choosing on the test window would pick the one that got
lucky there. EASE and ItemKNN are not servable: they need a model per request.

Served through the two-tower's path: a two-tower scores an item by ``[u, 1] · [v / T,
bias]`` (``towers.model``); a fallback by a query vector with no learnt part:

- popularity, all-time or recent: ``[1] · [count]``, one dimension, the item's count of
  events before ``as_of`` (within the window for recent popularity);
- segment popularity: ``one_hot(segment) · [count, count in segment 1, ..., in segment
  S]``; the query picks the user's segment column, or column 0 (global popularity) for a
  user whose profile misses a field or whose segment was too small to be counted apart.

This module is the format (core: serving imports it); the choice of the baseline, its
ranking and candidates are ``evaluation.fallback`` (they need ``towers``' baselines).

So its LanceDB table holds these vectors, its candidates are the top-K unseen items by
score, and serving (``serving.fallback``) builds the query from the user's profile (online
features, or the POST body) and excludes each user's seen items, as for a two-tower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KIND = "fallback"
RANKING = "ranking.parquet"
GLOBAL = "score"  # ranking.parquet's global column; the segment columns follow it


def is_fallback(info: dict[str, Any]) -> bool:
    """A version.json (``ModelRegistry.info``) of a fallback version."""
    return info.get("kind") == KIND


def segments(folder: Path) -> list[str]:
    """The segment labels of a fallback's ranking, in vector order (after the global one)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(Path(folder) / RANKING).names
    return [name for name in names if name not in ("item_id", GLOBAL)]


def item_vectors(folder: Path, item_ids: np.ndarray) -> np.ndarray:
    """(N, 1 + S) float32: each item's scores (global, then one per segment), in
    ``item_ids`` order (its LanceDB vectors)."""
    table = pd.read_parquet(Path(folder) / RANKING).set_index("item_id")
    missing = np.setdiff1d(item_ids, table.index.to_numpy())
    if missing.size:
        raise ValueError(f"{folder / RANKING} lacks {missing.size} catalogue item(s), e.g. "
                         f"{missing[:5].tolist()}: the catalogue changed since it was built")  # fmt: skip
    columns = [GLOBAL, *segments(folder)]
    return table.loc[np.asarray(item_ids), columns].to_numpy(np.float32)


def segment_label(profile: Mapping[str, Any], fields: Sequence[str]) -> str | None:
    """A profile's segment label (``towers.segments.segment_labels``' format); None when a
    field is missing."""
    values = [profile.get(field) for field in fields]
    if any(value is None or (isinstance(value, float) and math.isnan(value)) for value in values):
        return None
    return " | ".join(str(value) for value in values)


def queries(labels: Sequence[str | None], segment_names: Sequence[str]) -> np.ndarray:
    """(U, 1 + S) float32 one-hot query vectors: each label's segment column, column 0
    (global popularity) for None or a segment not counted apart."""
    column = {name: i + 1 for i, name in enumerate(segment_names)}
    out = np.zeros((len(labels), 1 + len(segment_names)), np.float32)
    out[np.arange(len(labels)), [column.get(label, 0) if label else 0 for label in labels]] = 1
    return out
