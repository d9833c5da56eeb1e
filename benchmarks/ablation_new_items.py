"""Ablation of the item tower's id-dropout for new items, on the VALIDATION window only.

For each cut of a finished backtest (``recsys backtest --out OUT``: its per-cut folders and
``backtest.json``), each ``TowerConfig.item_id_dropout`` is trained on the training split
(the cut's chosen temperature and recency half-life, no popularity prior) with early stopping
on validation recall@20, then scored on validation: recall@20 of warm users (full catalogue)
and of the validation window's new items (items with no event before ``val_start`` taken in
``[val_start, cut)``, ranked among themselves, ``evaluation.backtest_new_items``), beside
the genre baselines' validation recall from the backtest's choices. The test window is never
read.

    python benchmarks/ablation_new_items.py --backtest /tmp/bt17 --dropouts 0.1 0.3 0.5
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
    from backtest_cuts import backtest_cuts, with_chosen_prior

    from evaluation.backtest import CONTENT, TWO_TOWER
    from evaluation.backtest_new_items import new_item_split, reach, restricted
    from towers.config import TowerConfig
    from towers.data import load_source, tower_data
    from towers.evaluate import per_user_metrics, rank_metrics
    from towers.train import tower_scores, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backtest", type=Path, required=True, help="a backtest's --out")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--quantiles", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    parser.add_argument(
        "--with-prior",
        action="store_true",
        help="score with the popularity prior the backtest chose per cut",
    )
    parser.add_argument("--cuts", type=int, nargs="*", help="window indices (default: all)")
    args = parser.parse_args()
    summary, cuts = backtest_cuts(args.backtest, args.cuts)
    cfg = summary["config"]
    rows = []
    for w, settings in cuts:
        source = load_source(settings, with_test=False)
        data = tower_data(source, ("train",))
        assert data.val is not None
        val = data.val.split
        new = new_item_split(source.interactions, source.item_ids, val.start, val.end)
        choice = w["choices"][TWO_TOWER]
        content = w["choices"].get(CONTENT, {})
        base = {n: content[n]["val_recall@20"] for n in ("genre popularity", "genre affinity")
                if n in content}  # fmt: skip
        for dropout in args.dropouts:
            tcfg = replace(TowerConfig(), epochs=cfg["max_epochs"], seed=cfg["seed"],
                           temperature=choice["temperature"],
                           recency_half_life_days=choice["recency_half_life_days"],
                           item_id_dropout=dropout)  # fmt: skip
            result = train(tcfg, data, progress=False)
            if args.with_prior:
                with_chosen_prior(result.model, choice)
            scores = tower_scores(result.model, data.val.users, data.val.items)
            warm = rank_metrics(scores, val, ks=(20,))["warm"]["recall@20"]
            on_new = per_user_metrics(restricted(scores, val, new), new, (20,))["recall@20"]
            # The items the model never saw at a quantile of the known items, levelled on the
            # average user or at that quantile of their bias (towers.model.unknown_item_bias):
            # full-catalogue recall and reach of the window's new items, per quantile.
            for q, levelled in [(q, lv) for q in args.quantiles for lv in (True, False)]:
                common = tower_scores(result.model, data.val.users, data.val.items, q, levelled)
                m = rank_metrics(common, val, ks=(20,))
                q_new = per_user_metrics(restricted(common, val, new), new, (20,))["recall@20"]
                print(json.dumps({"window": w["index"], "quantile": q,
                                  "rule": "levelled" if levelled else "bias",
                                  "val warm recall@20": round(m["warm"]["recall@20"], 4),
                                  "val all recall@20": round(m["all"]["recall@20"], 4),
                                  "val new-item recall@20": round(float(np.mean(q_new)), 4),
                                  "reach@20": round(reach(common, val, new), 4)}), flush=True)  # fmt: skip
            base_all = rank_metrics(scores, val, ks=(20,))["all"]["recall@20"]
            print(json.dumps({"window": w["index"], "quantile": None,
                              "val all recall@20": round(base_all, 4),
                              "reach@20": round(reach(scores, val, new), 4)}), flush=True)  # fmt: skip
            rows.append({"window": w["index"], "item_id_dropout": dropout,
                         "best_epoch": result.best_epoch, "val warm recall@20": round(warm, 4),
                         "val new-item recall@20": round(float(np.mean(on_new)), 4),
                         "new items": len(new.item_ids), "users": len(new.user_ids),
                         **{f"val {n}": round(v, 4) for n, v in base.items()}})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    for dropout in args.dropouts:
        mine = [r for r in rows if r["item_id_dropout"] == dropout]
        print(f"item_id_dropout {dropout:g}: mean over {len(mine)} window(s) val warm "
              f"recall@20 {np.mean([r['val warm recall@20'] for r in mine]):.4f}, val new-item "
              f"recall@20 {np.mean([r['val new-item recall@20'] for r in mine]):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
