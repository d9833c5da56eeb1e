"""The cuts of a finished backtest (``recsys backtest --out OUT``), for the validation-only
ablations (``ablation_new_items.py``, ``ablation_user_ids.py``, ``ablation_warm_start.py``):
each window with the settings of its cut's folder, the popularity prior validation chose for
the cut's model, and one way to score a model on the cut's validation window."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


def backtest_cuts(
    backtest: Path, only: list[int] | None = None
) -> tuple[dict[str, Any], Iterator[tuple[dict[str, Any], Any]]]:
    """The backtest's summary, and (window, settings) of each cut (those in ``only``, if
    given); the settings' test window is the cut's, never read by the ablations."""
    from recsys.settings import settings_from

    summary = json.loads((backtest / "backtest.json").read_text())

    def cuts() -> Iterator[tuple[dict[str, Any], Any]]:
        for w in summary["windows"]:
            if only and w["index"] not in only:
                continue
            yield w, settings_from(data_dir=backtest / "cuts" / f"cut{w['index']}",
                                   dataset=summary["dataset"], val_start=w["val_start"],
                                   test_start=w["cut"], as_of=w["end"])  # fmt: skip

    return summary, cuts()


def with_chosen_prior(model: Any, choice: dict[str, Any]) -> None:
    """Give ``model`` the prior validation chose for the cut ("<weight> log1p(<feature>)",
    or "none")."""
    if choice["popularity_prior"] == "none":
        return
    weight, feature = choice["popularity_prior"].split(" log1p(")
    model.set_config(replace(model.cfg, popularity_prior=float(weight),
                             popularity_feature=feature.rstrip(")")))  # fmt: skip


def validation_new_users(settings: Any, history: int) -> tuple[Any, Any, Any, Any, Any]:
    """A cut's source (its test window unread) and validation window (an EvalSplit), with
    the window's "new after ``history``" users: their split, given events and profiles."""
    import pandas as pd

    from evaluation.backtest_cut import new_user_split
    from towers.data import load_source

    source = load_source(settings, with_test=False)
    val = source.windows["val"][0]
    new, given = new_user_split(source.interactions, source.item_ids, val, history)
    users = pd.read_parquet(settings.paths.dataset / "users.parquet")
    profiles = users.set_index("user_id").loc[new.user_ids].reset_index()
    return source, val, new, given, profiles


@dataclass
class ValidationCut:
    """What a validation-only ablation trains and scores on one cut: the training split
    (``data``, encoded at the default history length), the validation window ``val``, its
    "new after 5" users ``new`` with their cold-start requests ``batch`` (None when there are
    none), and the choices the backtest made for the cut's two-tower (``choice``)."""

    data: Any
    val: Any
    new: Any
    batch: Any
    choice: dict[str, Any]
    max_epochs: int

    def config(self, **override: Any) -> Any:
        """The default TowerConfig at the cut's chosen temperature and recency half-life,
        seed 0, ``override`` on top."""
        from towers.config import TowerConfig

        chosen = {"temperature": self.choice["temperature"],
                  "recency_half_life_days": self.choice["recency_half_life_days"]}  # fmt: skip
        return replace(TowerConfig(), epochs=self.max_epochs, seed=0, **{**chosen, **override})


def validation_cut(window: dict[str, Any], settings: Any, config: dict[str, Any]) -> ValidationCut:
    """One cut of ``backtest_cuts`` (its window and settings; ``config``: the backtest's)
    made ready for a validation-only ablation (:class:`ValidationCut`)."""
    from evaluation.backtest import TWO_TOWER
    from evaluation.backtest_cut import cold_start_batch
    from towers.config import TowerConfig
    from towers.data import tower_data

    source, val, new, given, profiles = validation_new_users(settings, config["new_user_history"])
    data = tower_data(source, ("train",), TowerConfig.history)
    assert data.val is not None
    batch = cold_start_batch(data.encoder, profiles, given,
                             settings.paths.dataset / "items.parquet",
                             settings.recent_items) if len(new.user_ids) else None  # fmt: skip
    return ValidationCut(data, val, new, batch, window["choices"][TWO_TOWER], config["max_epochs"])


def validation_recall(
    model: Any, choice: dict[str, Any], data: Any, val: Any, batch: Any, new: Any
) -> dict[str, float]:
    """``model`` given the cut's chosen prior, scored on the validation window as the
    ablations score it: recall@20 of all, warm and cold users on the full catalogue and, with
    ``batch`` (the cold-start requests of the ``new`` users' first events), of those users."""
    import numpy as np

    from towers.evaluate import per_user_metrics, rank_metrics
    from towers.train import tower_scores

    with_chosen_prior(model, choice)
    m = rank_metrics(tower_scores(model, data.val.users, data.val.items), val, ks=(20,))
    row = {f"val {g} recall@20": round(m[g]["recall@20"], 4)
           for g in ("all", "warm", "cold") if g in m}  # fmt: skip
    if batch is not None:
        on_new = per_user_metrics(tower_scores(model, batch, data.val.items), new,
                                  (20,))["recall@20"]  # fmt: skip
        row["val new after 5 recall@20"] = round(float(np.mean(on_new)), 4)
    return row
