"""Ablation of the user tower's id-dropout (how often a training row's user id is replaced by
the unknown-user slot), on the VALIDATION window only, per user group.

A new user's request carries no known id: the tower answers from the profile and the history
alone. With ``TowerConfig.user_id_dropout`` p, a share p of the training rows teaches that
path; at 1 the tower never reads an id and every user is answered as a new one would be.

For each cut of a finished backtest (``recsys backtest --out OUT``: its per-cut folders and
``backtest.json``), each dropout is trained on the training split (the cut's chosen
temperature and recency half-life) with early stopping on validation recall@20, given the
cut's chosen popularity prior, and scored on the validation window: warm and cold users'
recall@20 on the full catalogue, and the validation window's "new after 5" users (first seen
in it with more than 5 events: the first 5 given as a cold-start request's history,
``evaluation.backtest_cut.cold_start_batch``, scored on the rest). The test window is never
read.

    python benchmarks/ablation_user_ids.py --backtest /tmp/bt --dropouts 0.3 0.6 1.0

``--variant NAME=JSON`` (repeatable) compares any other TowerConfig overrides the same way,
per user group, e.g. ``--variant 'history 10={"history": 10}'`` (a ``history`` override is
encoded with that many recent items, at most the features' ``recent_items``); with
``--variant`` only the variants run (``--variant 'default={}'`` is the default config).
``"retired": [names]`` is not a TowerConfig field: the encoder is fitted on the catalogue
with exactly those features retired (``recsys.features.spec.Feature.retired``), e.g.
``--variant 'zip prefix={"retired": ["zip_region"]}'`` (the user tower as it was before
zip_region: zip_prefix back as an input) or ``--variant 'both={"retired": []}'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import numpy as np
    from backtest_cuts import backtest_cuts, validation_new_users, validation_recall

    from evaluation.backtest import TWO_TOWER
    from evaluation.backtest_cut import cold_start_batch
    from recsys.features.catalog import CATALOG
    from towers.config import TowerConfig
    from towers.data import tower_data
    from towers.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backtest", type=Path, required=True, help="a backtest's --out")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="TowerConfig overrides to compare instead of --dropouts",
    )
    parser.add_argument("--cuts", type=int, nargs="*", help="window indices (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    overrides = (
        {name: json.loads(v) for name, v in variants.items()}
        if variants
        else {f"user_id_dropout {d:g}": {"user_id_dropout": d} for d in args.dropouts}
    )
    summary, cuts = backtest_cuts(args.backtest, args.cuts)
    cfg = summary["config"]
    rows = []
    for w, settings in cuts:
        source, val, new, given, profiles = validation_new_users(settings,
                                                                 cfg["new_user_history"])  # fmt: skip
        choice = w["choices"][TWO_TOWER]
        # The cut's training data and the new users' requests, encoded once per history length
        # (a `history` override encodes its own): every run of that length shares the encoder.
        encoded: dict[tuple, tuple] = {}
        for name, override in overrides.items():
            override = dict(override)
            retired = override.pop("retired", None)
            history = override.get("history", TowerConfig.history)
            key = (history, None if retired is None else tuple(sorted(retired)))
            if key not in encoded:
                catalog = {} if retired is None else {"catalog": CATALOG.retiring(retired)}
                data = tower_data(source, ("train",), history, **catalog)
                batch = cold_start_batch(data.encoder, profiles, given,
                                         settings.paths.dataset / "items.parquet",
                                         settings.recent_items) if len(new.user_ids) else None  # fmt: skip
                encoded[key] = data, batch
            data, batch = encoded[key]
            assert data.val is not None
            for seed in args.seeds:
                chosen = {
                    "temperature": choice["temperature"],
                    "recency_half_life_days": choice["recency_half_life_days"],
                }
                # A variant may override the cut's choices too ('T 0.1={"temperature": 0.1}').
                tcfg = replace(TowerConfig(), epochs=cfg["max_epochs"], seed=seed,
                               **{**chosen, **override})  # fmt: skip
                result = train(tcfg, data, progress=False)
                row = {"window": w["index"], "variant": name, "seed": seed,
                       "best_epoch": result.best_epoch,
                       **validation_recall(result.model, choice, data, val, batch, new)}  # fmt: skip
                if batch is not None:
                    row["new after 5 users"] = len(new.user_ids)
                rows.append(row)
                print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k.startswith("val ")] if rows else []
    for name in overrides:
        mine = [r for r in rows if r["variant"] == name]
        print(f"{name}, mean over {len(mine)} run(s): " + ", ".join(
            f"{k} {np.mean([r[k] for r in mine if k in r]):.4f}" for k in keys))  # fmt: skip


if __name__ == "__main__":
    main()
