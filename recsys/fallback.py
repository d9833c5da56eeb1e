"""The fallback version: a baseline promoted when no two-tower passes the quality gate and
nothing is current, so that a fresh data folder always has something to serve.

A fallback is a registry version like any other (``recsys.registry``: staged → gated →
embedded → promoted, by the run that built it) whose ``version.json`` says ``"kind":
"fallback"`` and names its baseline. Its artifacts: ``ranking.parquet`` (every catalogue
item and its score, best first), ``metrics.json``/``.md`` (the test window's scores of the
rejected two-tower and of every baseline, copied from the candidate: what it was chosen on).

It reuses the two-tower's serving path exactly: a two-tower scores an item by ``[u, 1] ·
[v / T, bias]`` (``towers.model``); a fallback is the same with no user part, ``[1] ·
[score]``. So its LanceDB table holds one-dimensional vectors (the item's score), its
candidates are the top-K unseen items by score, and serving, which excludes each user's seen
items, answers with the top-K popular items the user has not seen (``serving.loaded``).

The baseline served is plain popularity (interaction counts before ``as_of``): the one of
``towers.compare``'s baselines that needs nothing but the interactions. Other baselines are
listed in the version's metrics.json with their scores, but none is servable here yet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

KIND = "fallback"
RANKING = "ranking.parquet"
SERVABLE = ("popularity",)  # baselines a fallback version can serve, by metrics.json name
METRIC = "recall@20"


def is_fallback(info: dict[str, Any]) -> bool:
    """A version.json (``ModelRegistry.info``) of a fallback version."""
    return info.get("kind") == KIND


def choose(metrics: dict[str, Any]) -> tuple[str, str]:
    """(baseline, why): the servable baseline with the best test recall@20 over all users.

    metrics.json holds the test window's scores only (the baselines have no validation
    score recorded), so the choice is made there, among servable baselines; the reason
    says so."""
    models = metrics.get("models", {})
    scores = {name: models[name]["all"][METRIC] for name in SERVABLE
              if isinstance(models.get(name, {}).get("all", {}).get(METRIC), int | float)}  # fmt: skip
    if not scores:
        raise ValueError(f"metrics.json has no {METRIC} of a servable baseline {SERVABLE}: "
                         f"it lists {sorted(models)}")  # fmt: skip
    best = max(scores, key=lambda name: scores[name])
    others = sorted(set(models) - set(SERVABLE) - {n for n in models if n.startswith("two-tower")})
    return best, (f"{best}: test {METRIC} {scores[best]:.4f}, best of the servable baselines "
                  f"{sorted(scores)} on the test window (no validation scores recorded); "
                  f"not servable as a fallback: {others or 'none'}")  # fmt: skip


def ranking(interactions: pd.DataFrame, item_ids: np.ndarray, as_of: Any) -> pa.Table:
    """Every catalogue item and its interaction count before ``as_of``: (item_id, score),
    best first, ties by item id."""
    when = pd.to_datetime(interactions["event_timestamp"], utc=True)
    before = interactions.loc[(when < pd.Timestamp(as_of)).to_numpy(), "item_id"]
    counts = before.value_counts().reindex(np.asarray(item_ids), fill_value=0)
    frame = pd.DataFrame({"item_id": counts.index.to_numpy(np.int64),
                          "score": counts.to_numpy(np.float32)})  # fmt: skip
    frame = frame.sort_values(["score", "item_id"], ascending=[False, True], kind="stable")
    return pa.Table.from_pandas(frame, preserve_index=False)


def item_vectors(folder: Path, item_ids: np.ndarray) -> np.ndarray:
    """(N, 1) float32: each item's score, in ``item_ids`` order (its LanceDB vectors)."""
    table = pd.read_parquet(Path(folder) / RANKING).set_index("item_id")
    missing = np.setdiff1d(item_ids, table.index.to_numpy())
    if missing.size:
        raise ValueError(f"{folder / RANKING} lacks {missing.size} catalogue item(s), e.g. "
                         f"{missing[:5].tolist()}: the catalogue changed since it was built")  # fmt: skip
    return table.loc[np.asarray(item_ids), "score"].to_numpy(np.float32).reshape(-1, 1)


def build(reg: Any, version: str, run_id: str, info: dict[str, Any], candidate: Path,
          interactions: pd.DataFrame, item_ids: np.ndarray, as_of: Any) -> str:  # fmt: skip
    """Write fallback ``version`` into ``reg`` (staged): its ranking, and the metrics of the
    rejected ``candidate`` folder. Returns the baseline's reason (``choose``)."""
    import pyarrow.parquet as pq

    metrics = json.loads((candidate / "metrics.json").read_text())
    baseline, why = choose(metrics)
    with reg.build(version, run_id, {**info, "kind": KIND, "baseline": baseline,
                                     "reason": why}) as folder:  # fmt: skip
        pq.write_table(ranking(interactions, item_ids, as_of), folder / RANKING)
        for name in ("metrics.json", "metrics.md", "recall_at_k.png"):
            if (candidate / name).exists():
                shutil.copyfile(candidate / name, folder / name)
    return why


def candidates(folder: Path, interactions: pd.DataFrame, item_ids: np.ndarray, as_of: Any,
               version: str, k: int = 100) -> pa.Table:  # fmt: skip
    """Top-``k`` unseen items by score for every user with an interaction before ``as_of``:
    the same table ``recsys.candidates.user_candidates`` makes for a two-tower version."""
    from recsys.candidates import candidate_table, seen_matrix, top_k

    before = interactions[interactions.event_timestamp < pd.Timestamp(as_of)]
    user_ids = np.sort(before.user_id.unique())
    queries = np.ones((len(user_ids), 1), dtype=np.float32)  # (U, 1): no user part
    vectors = item_vectors(folder, item_ids)  # (N, 1)
    positions, scores = top_k(queries, vectors, seen_matrix(before, user_ids, item_ids), k)
    return candidate_table(user_ids, item_ids, positions, scores, as_of, version)
