"""The fallback version: the best servable baseline, promoted when no two-tower passes the
quality gate and nothing is current, so that a fresh data folder always has something to
serve.

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

So its LanceDB table holds these vectors, its candidates are the top-K unseen items by
score, and serving (``serving.fallback``) builds the query from the user's profile (online
features, or the POST body) and excludes each user's seen items, as for a two-tower.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

KIND = "fallback"
RANKING = "ranking.parquet"
# Baselines a fallback version can serve, by metrics.json name; ties go to the first.
SERVABLE = ("popularity", "popularity (recent)", "segment popularity")
METRIC = "recall@20"
ON_VALIDATION = f"validation {METRIC}"  # towers.baseline_scores.baselines' record in choices
GLOBAL = "score"  # ranking.parquet's global column; the segment columns follow it


def is_fallback(info: dict[str, Any]) -> bool:
    """A version.json (``ModelRegistry.info``) of a fallback version."""
    return info.get("kind") == KIND


def choose(metrics: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(baseline, its settings, why): the servable baseline with the best validation
    recall@20 over all users, from metrics.json's choices. Settings: ``window_days`` (None:
    all history) or ``segment_fields``."""
    choices = metrics.get("choices", {})
    on_val = choices.get(ON_VALIDATION, {})
    scores = {name: on_val[name] for name in SERVABLE
              if isinstance(on_val.get(name), int | float) and not math.isnan(on_val[name])}  # fmt: skip
    if not scores:
        raise ValueError(f"metrics.json has no choices/{ON_VALIDATION!r} of a servable baseline "
                         f"{SERVABLE} (it has {sorted(on_val)}): retrain with this version "
                         "of towers.baseline_scores")  # fmt: skip
    best = max(scores, key=lambda name: scores[name])
    settings: dict[str, Any] = {"window_days": None}
    if best == "popularity (recent)":
        settings["window_days"] = choices[best]["window_days"]
    elif best == "segment popularity":
        from towers.segments import SEGMENTATIONS

        settings = {"segment_fields": list(SEGMENTATIONS[choices[best]["segmentation"]])}
    shown = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
    test = metrics.get("models", {}).get(best, {}).get("all", {}).get(METRIC)
    why = (f"{best} {settings}: best validation {METRIC} of the servable baselines ({shown})"
           + (f"; test {METRIC} {test:.4f}" if isinstance(test, int | float) else ""))  # fmt: skip
    return best, settings, why


def ranking(
    interactions: pd.DataFrame,
    item_ids: np.ndarray,
    as_of: Any,
    window_days: float | None = None,
    users: pd.DataFrame | None = None,
    segment_fields: Sequence[str] | None = None,
    min_segment_users: int | None = None,
) -> pa.Table:
    """Every catalogue item and its count of events before ``as_of`` (``score``; within
    ``window_days`` of it if given), best first, ties by item id; with ``segment_fields``,
    one more column per segment of ``users`` large enough to be counted apart (its
    ``towers.segments.SegmentPopularity`` scores, named by segment label; at least
    ``min_segment_users`` users, by default the baseline's own threshold)."""
    from towers.baselines import Popularity

    # The baseline's own counts: events before as_of (within window_days of it).
    popularity = Popularity(window_days).fit(interactions, item_ids, before=as_of)
    frame = pd.DataFrame({"item_id": popularity.item_ids_, GLOBAL: popularity.counts_})
    if segment_fields:
        from towers.segments import MIN_SEGMENT_USERS, SegmentPopularity

        if users is None:
            raise ValueError("segment popularity needs the users profile (users=...)")
        before = interactions[pd.to_datetime(interactions.event_timestamp, utc=True)
                              < pd.Timestamp(as_of)]  # fmt: skip
        least = MIN_SEGMENT_USERS if min_segment_users is None else min_segment_users
        model = SegmentPopularity(segment_fields, least).fit(
            before, users, frame.item_id.to_numpy()
        )
        for label, scores in sorted(model.segments_.items()):
            frame[label] = scores  # (N,) counts in the segment + a global tie-break below 1
    frame = frame.sort_values([GLOBAL, "item_id"], ascending=[False, True], kind="stable")
    return pa.Table.from_pandas(frame, preserve_index=False)


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


def build(reg: Any, version: str, run_id: str, info: dict[str, Any], candidate: Path,
          interactions: pd.DataFrame, item_ids: np.ndarray, as_of: Any,
          users: pd.DataFrame | None = None,
          choice: tuple[str, dict[str, Any], str] | None = None) -> str:  # fmt: skip
    """Write fallback ``version`` into ``reg`` (staged): its ranking, and the metrics of the
    rejected ``candidate`` folder. ``choice``: (baseline, settings, why) as :func:`choose`
    returns them, by default ``choose`` of those metrics. Returns why."""
    import pyarrow.parquet as pq

    metrics = json.loads((candidate / "metrics.json").read_text())
    baseline, settings, why = choice or choose(metrics)
    table = ranking(interactions, item_ids, as_of, settings.get("window_days"), users,
                    settings.get("segment_fields"))  # fmt: skip
    with reg.build(version, run_id, {**info, "kind": KIND, "baseline": baseline, **settings,
                                     "reason": why}) as folder:  # fmt: skip
        pq.write_table(table, folder / RANKING)
        for name in ("metrics.json", "metrics.md", "recall_at_k.png"):
            if (candidate / name).exists():
                shutil.copyfile(candidate / name, folder / name)
    return why


def user_queries(folder: Path, user_ids: np.ndarray, users: pd.DataFrame | None) -> np.ndarray:
    """(U, 1 + S) query vectors of ``user_ids`` for the fallback in ``folder``: all ``[1]``
    for popularity, each user's segment one-hot (from ``users``) for segment popularity."""
    names = segments(folder)
    if not names:
        return np.ones((len(user_ids), 1), dtype=np.float32)
    from towers.segments import segment_labels

    fields = json.loads((Path(folder) / "version.json").read_text())["segment_fields"]
    if users is None:
        raise ValueError("a segment popularity fallback needs the users profile (users=...)")
    labels = segment_labels(users, fields).reindex(np.asarray(user_ids)).to_numpy()
    return queries([label if isinstance(label, str) else None for label in labels], names)


def candidates(folder: Path, interactions: pd.DataFrame, item_ids: np.ndarray, as_of: Any,
               version: str, k: int = 100, users: pd.DataFrame | None = None) -> pa.Table:  # fmt: skip
    """Top-``k`` unseen items by score for every user with an interaction before ``as_of``:
    the same table ``recsys.candidates.user_candidates`` makes for a two-tower version."""
    from recsys.candidates import candidate_table, seen_matrix, top_k

    before = interactions[interactions.event_timestamp < pd.Timestamp(as_of)]
    user_ids = np.sort(before.user_id.unique())
    vectors = item_vectors(folder, item_ids)  # (N, 1 + S)
    positions, scores = top_k(user_queries(folder, user_ids, users), vectors,
                              seen_matrix(before, user_ids, item_ids), k)  # fmt: skip
    return candidate_table(user_ids, item_ids, positions, scores, as_of, version)
