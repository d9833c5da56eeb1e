"""Item cold start in the rolling backtest (``evaluation.backtest_cut``): how well each model
ranks the items first taken after the cut, for the users who take them.

A window's **new items** are the catalogue items with no event before the cut that are taken
in the test window ``[cut, end)``: they have content but empty popularity features as of the
cut, and the two-tower's item vocabulary (fitted on training rows, all before the cut) maps
them to the unknown-id slot, as a catalogue refresh serves them. For every test user (warm
or cold) who takes at least one, the candidate set is the window's new items and the truth
the ones they took, scored by ``towers.evaluate.per_user_metrics`` like every other group.

The content baselines (``towers.baselines.GenrePopularity``, ``GenreAffinity``) and their
trailing windows are chosen (recall@20, ties broken by NDCG@20) on the validation window's
new items (no event before
``val_start``, taken in ``[val_start, cut)``), fitted on the events before that, then refitted
on the events before the cut. **Reach**: the share of the window's new items that appear in
at least one test user's full-catalogue top 20 (does a new item reach anyone at all?).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evaluation.backtest import CONTENT, ORACLE, TWO_TOWER
from towers.baselines import GENRE_BASELINES, tune_genre_baselines
from towers.evaluate import (
    EvalSplit,
    ScoreFn,
    build_eval_split,
    item_index,
    per_user_metrics,
    to_utc,
    top_k_items,
)

REACH_K = 20


def new_item_split(
    interactions: pd.DataFrame, item_ids: np.ndarray, start: Any, end: Any | None
) -> EvalSplit:
    """The catalogue items (``item_ids``) with no event before ``start`` that are taken in
    ``[start, end)``, as the split's catalogue (catalogue order); its users are those who
    take at least one of them, their truth the ones they took."""
    when = pd.to_datetime(interactions["event_timestamp"], utc=True)
    items = interactions["item_id"].to_numpy(np.int64)
    before = (when < to_utc(start)).to_numpy()
    inside = ~before if end is None else ~before & (when < to_utc(end)).to_numpy()
    index = item_index(item_ids)
    cols = index.get_indexer(np.unique(items[inside & ~np.isin(items, items[before])]))
    new = index[np.sort(cols[cols >= 0])]
    # Events on other items fall outside this split's catalogue and are ignored there.
    return build_eval_split(interactions, new.to_numpy(np.int64), start, end)


def restricted(scores: ScoreFn, full: EvalSplit, part: EvalSplit) -> ScoreFn:
    """A score function of ``full``'s users and catalogue, read for ``part``'s users and
    items (each of them in ``full``: a new item's taker has it as test truth)."""
    rows = np.searchsorted(full.user_ids, part.user_ids).clip(max=max(len(full.user_ids) - 1, 0))
    if len(part.user_ids) and not np.array_equal(full.user_ids[rows], part.user_ids):
        raise ValueError("the new-item split has users outside the test split")
    cols = item_index(full.item_ids).get_indexer(part.item_ids)
    if (cols < 0).any():
        raise ValueError("the new-item split has items outside the test split's catalogue")
    return lambda r: np.asarray(scores(rows[r]))[:, cols]  # (B, M)


def _best(tried: dict[Any, tuple[float, float]]) -> Any:
    """The key with the highest (recall, NDCG); ties go to the first tried."""
    return max(tried, key=tried.__getitem__)


def content_baselines(
    interactions: pd.DataFrame, item_ids: np.ndarray, val: EvalSplit, test: EvalSplit,
    genres_val: list[Any], genres_test: list[Any], k: int = 20,
) -> tuple[dict[str, ScoreFn], dict[str, Any]]:  # fmt: skip
    """Each genre baseline at its validation-chosen window, fitted on the events before the
    test window, as score functions of ``test`` (a new-item split), plus :data:`CONTENT`, the
    one with the higher validation recall@``k`` (ties: NDCG@``k``); ``genres_*[i]``: the genres of
    ``item_ids[i]`` as of each window's start. Returns (score functions, choices)."""
    before_val = interactions[interactions.event_timestamp < val.start]
    tried = tune_genre_baselines(before_val, val, item_ids, genres_val, k=k)
    fns: dict[str, ScoreFn] = {}
    chosen: dict[str, Any] = {}
    for name, cls in GENRE_BASELINES.items():
        days = _best({d: v for (n, d), v in tried.items() if n == name})
        model = cls(days).fit(interactions, item_ids, genres_test, before=test.start)
        fns[name] = model.score_fn(test)
        recall, ndcg = tried[(name, days)]
        chosen[name] = {"window_days": days, f"val_recall@{k}": recall, f"val_ndcg@{k}": ndcg}
    best = _best({n: tried[(n, c["window_days"])] for n, c in chosen.items()})
    fns[CONTENT] = fns[best]
    choices = {"chosen": best, **chosen, "validation users": len(val.user_ids),
               "validation new items": len(val.item_ids),
               f"val (recall@{k}, ndcg@{k})": {f"{n} {'all' if d is None else f'{d:g}'}": v
                                               for (n, d), v in tried.items()}}  # fmt: skip
    return fns, choices


def reach(scores: ScoreFn, test: EvalSplit, new: EvalSplit, k: int = REACH_K) -> float:
    """Share of ``new``'s items in at least one ``test`` user's full-catalogue top ``k``."""
    if not len(new.item_ids):
        return float("nan")
    top = np.unique(top_k_items(scores, test, k))
    cols = item_index(test.item_ids).get_indexer(new.item_ids)
    return float(np.isin(cols, top).mean())


def new_items_cut(
    source: Any, genres: str, full: dict[str, ScoreFn], ks: tuple[int, ...],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """One window's new-item group: ``source`` is the cut's ``towers.data.TowerSource``,
    ``genres`` its items' genre column, ``full`` score functions of the test split's users
    over the whole catalogue (the two-tower and the oracle if any are scored on the group;
    the reach of every one is measured). Returns (model -> metric -> (users,), the content
    baselines' choices, counts and reach@20)."""
    (val, _, val_items), (test, _, test_items) = source.windows["val"], source.windows["test"]
    new = new_item_split(source.interactions, source.item_ids, test.start, test.end)
    info: dict[str, Any] = {"items": len(new.item_ids), "users": len(new.user_ids)}
    info[f"reach@{REACH_K}"] = {name: reach(fn, test, new) for name, fn in full.items()}
    if not len(new.user_ids):
        return {}, {}, info
    per_user = {name: per_user_metrics(restricted(fn, test, new), new, ks)
                for name, fn in full.items() if name in (TWO_TOWER, ORACLE)}  # fmt: skip
    new_val = new_item_split(source.interactions, source.item_ids, val.start, val.end)
    if not len(new_val.user_ids):
        return per_user, {"skipped": "no new item taken in the validation window"}, info
    fns, choices = content_baselines(source.interactions, source.item_ids, new_val, new,
                                     list(val_items[genres]), list(test_items[genres]))  # fmt: skip
    per_user |= {name: per_user_metrics(fn, new, ks) for name, fn in fns.items()}
    return per_user, choices, info
