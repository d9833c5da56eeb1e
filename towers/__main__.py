"""Command line of the towers package.

python -m towers compare [--losses softmax bce triplet] [--epochs N]   # report on test
python -m towers train   [--loss softmax] [--out model.pt]             # one model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from recsys.settings import Settings
from towers.config import TowerConfig


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="python -m towers", description=__doc__)
    parser.add_argument("command", choices=["compare", "train"])
    parser.add_argument("--data-dir", type=Path, help="data folder built by `recsys build`")
    parser.add_argument("--losses", nargs="+", default=["softmax", "bce", "triplet"])
    parser.add_argument("--loss", default="softmax")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--refit", action="store_true",
                        help="compare: score a refit on train + validation instead of the "
                        "model trained on the training split")  # fmt: skip
    args = parser.parse_args(argv)
    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    cfg = TowerConfig()
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    if args.command == "compare":
        from towers.release import train_release

        summary = train_release(settings, tuple(args.losses), cfg, args.out, refit=args.refit)
        sys.stdout.write(Path(summary["files"]["markdown"]).read_text() + "\n")
        return 0
    from towers.checkpoint import save_checkpoint
    from towers.data import load_tower_data
    from towers.train import evaluate_window, train

    data = load_tower_data(settings, with_test=False, history=cfg.history)
    result = train(replace(cfg, loss=args.loss), data)
    out = args.out or settings.paths.data_dir / "models" / f"two_tower_{args.loss}.pt"
    save_checkpoint(result, out)
    assert data.val is not None
    val = evaluate_window(result.model, data.val)["all"]
    sys.stdout.write(json.dumps({"checkpoint": str(out), "best_epoch": result.best_epoch,
                                 "seconds": result.seconds, "val": val}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
