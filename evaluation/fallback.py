"""A fallback version built: which servable baseline (:func:`choose`, on validation), its
ranking of the catalogue, and its candidates. The format it is written in, and what serving
reads of it, is ``recsys.fallback`` (whose docstring says why a fallback and how it is
served); this module needs ``towers``' baselines, so it lives above them."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.fallback import GLOBAL, KIND, RANKING, item_vectors, queries, segments

# Baselines a fallback version can serve, by metrics.json name; ties go to the first.
SERVABLE = ("popularity", "popularity (recent)", "segment popularity")
METRIC = "recall@20"
ON_VALIDATION = f"validation {METRIC}"  # towers.baseline_scores.baselines' record in choices


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
    the same table ``towers.candidates.user_candidates`` makes for a two-tower version."""
    from towers.candidates import candidate_table, seen_matrix, top_k

    before = interactions[interactions.event_timestamp < pd.Timestamp(as_of)]
    user_ids = np.sort(before.user_id.unique())
    vectors = item_vectors(folder, item_ids)  # (N, 1 + S)
    positions, scores = top_k(user_queries(folder, user_ids, users), vectors,
                              seen_matrix(before, user_ids, item_ids), k)  # fmt: skip
    return candidate_table(user_ids, item_ids, positions, scores, as_of, version)
