"""Would a popularity prior chosen per user group help? On the VALIDATION window only.

The pipeline chooses one prior (a weight times log1p of an item count) on all validation
users. Warm users, cold users and new users after 5 events may each prefer another. For each
cut of a finished backtest (``recsys backtest --out OUT``), the default config is trained on
the training split (the cut's chosen temperature and half-life), then every prior re-scores
the same vectors on the validation window's warm and cold users and its "new after 5" users
(through the cold-start request path, as ``ablation_user_ids.py`` scores them). It prints,
per group, the recall@20 at the prior chosen on all users and at the group's own best prior.
The latter is chosen and scored on the same users: an upper bound on what a per-group choice
could gain. The test window is never read.

    python benchmarks/ablation_prior_groups.py --backtest OUT
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

WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
GROUPS = ("all", "warm", "cold", "new after 5")


def main() -> None:
    import numpy as np
    from backtest_cuts import backtest_cuts, validation_cut

    from towers.evaluate import per_user_metrics
    from towers.train import tower_scores, train
    from towers.tuning import PRIOR_FEATURES, prior_key

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backtest", type=Path, required=True, help="a backtest's --out")
    parser.add_argument("--cuts", type=int, nargs="*", help="window indices (default: all)")
    args = parser.parse_args()
    summary, cuts = backtest_cuts(args.backtest, args.cuts)
    cfg = summary["config"]
    priors = [(0.0, PRIOR_FEATURES[0])] + [(w, f) for f in PRIOR_FEATURES for w in WEIGHTS]
    rows = []
    for w, settings in cuts:
        cut = validation_cut(w, settings, cfg)
        data, val, new, batch = cut.data, cut.val, cut.new, cut.batch
        if batch is None:
            raise SystemExit(f"window {w['index']}: no new users after 5 events in validation")
        tcfg = cut.config()
        model = train(tcfg, data, progress=False).model
        recall: dict[str, dict[str, float]] = {}
        for weight, feature in priors:
            model.set_config(replace(model.cfg, popularity_prior=weight,
                                     popularity_feature=feature))  # fmt: skip
            on_val = per_user_metrics(tower_scores(model, data.val.users, data.val.items), val,
                                      (20,))["recall@20"]  # fmt: skip
            on_new = per_user_metrics(tower_scores(model, batch, data.val.items), new,
                                      (20,))["recall@20"]  # fmt: skip
            recall[prior_key(weight, feature)] = {
                "all": float(on_val.mean()), "warm": float(on_val[val.warm].mean()),
                "cold": float(on_val[~val.warm].mean()), "new after 5": float(on_new.mean()),
            }  # fmt: skip
        chosen = max(recall, key=lambda k: recall[k]["all"])  # as the pipeline chooses
        row = {"window": w["index"], "chosen on all": chosen}
        for g in GROUPS[1:]:
            best = max(recall, key=lambda k: recall[k][g])
            row[g] = {"at chosen": round(recall[chosen][g], 4), "own best": best,
                      "at own best": round(recall[best][g], 4)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    for g in GROUPS[1:]:
        at_chosen = np.mean([r[g]["at chosen"] for r in rows])
        at_best = np.mean([r[g]["at own best"] for r in rows])
        print(
            f"{g}: mean validation recall@20 {at_chosen:.4f} at the prior chosen on all "
            f"users, {at_best:.4f} at the group's own best (+{at_best - at_chosen:.4f})"
        )


if __name__ == "__main__":
    main()
