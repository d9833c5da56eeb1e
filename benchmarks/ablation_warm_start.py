"""Would a warm start on the newest rows help? On the VALIDATION window only, per user group.

MovieLens-100K's strongest baseline is a 14-to-90-day popularity list: what users take next
follows the catalogue's latest trends. A production model is often not retrained from
scratch but continued on its newest events. For each cut of a finished backtest (``recsys
backtest --out OUT``), the default config is trained on the training split (the cut's chosen
temperature and half-life, early stopping on validation recall@20), then, from its best
epoch's weights and a fresh optimizer, trained ``--epochs`` more epoch(s) on only the newest
``--fractions`` of the training rows at ``--lr-scales`` times the learning rates. Each model
is given the cut's chosen popularity prior and scored on the validation window as
``ablation_user_ids.py`` scores it: warm and cold users on the full catalogue, the window's
"new after 5" users through the cold-start request path. The test window is never read.

    python benchmarks/ablation_warm_start.py --backtest OUT --fractions 0.1 0.25 --lr-scales 0.3 1
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
    import torch
    from backtest_cuts import backtest_cuts, validation_cut, validation_recall

    from towers.data import take
    from towers.train import Training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backtest", type=Path, required=True, help="a backtest's --out")
    parser.add_argument("--cuts", type=int, nargs="*", help="window indices (default: all)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25],
                        help="share of the training rows, newest first, to continue on")  # fmt: skip
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[0.3, 1.0],
                        help="learning rates of the warm start, times the config's")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the warm start")
    args = parser.parse_args()
    summary, cuts = backtest_cuts(args.backtest, args.cuts)
    cfg = summary["config"]
    rows = []
    for w, settings in cuts:
        cut = validation_cut(w, settings, cfg)
        data = cut.data
        assert data.train_age_days is not None
        tcfg = cut.config()
        run = Training(tcfg, data, progress=False)
        while not run.done:
            run.epoch()
        base = run.result()
        best = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
        models = [("default", base.model)]
        age = data.train_age_days  # days from each row to the newest: smallest = newest
        for fraction in args.fractions:
            newest = torch.sort(torch.argsort(age)[: max(1, int(len(age) * fraction))]).values
            part = replace(data, train_users=take(data.train_users, newest),
                           train_items=take(data.train_items, newest),
                           train_age_days=age[newest])  # fmt: skip
            for scale in args.lr_scales:
                more = Training(replace(tcfg, lr=tcfg.lr * scale,
                                        embedding_lr=tcfg.embedding_lr * scale),
                                part, progress=False, epochs=args.epochs)  # fmt: skip
                more.model.load_state_dict(best)
                while not more.done:
                    more.epoch()
                models.append((f"newest {fraction} lr x{scale}", more.result().model))
        for name, model in models:
            row = {"window": w["index"], "variant": name,
                   **validation_recall(model, cut.choice, data, cut.val, cut.batch,
                                       cut.new)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k.startswith("val ")] if rows else []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        print(f"{name}, mean over {len(mine)} cut(s): " + ", ".join(
            f"{k} {np.mean([r[k] for r in mine if k in r]):.4f}" for k in keys))  # fmt: skip


if __name__ == "__main__":
    main()
