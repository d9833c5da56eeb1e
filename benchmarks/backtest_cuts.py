"""The cuts of a finished backtest (``recsys backtest --out OUT``), for the validation-only
ablations (``ablation_new_items.py``, ``ablation_user_ids.py``): each window with the settings
of its cut's folder, and the popularity prior validation chose for the cut's model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
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
