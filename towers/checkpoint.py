"""Checkpoints: config, encoder (vocabularies and normalisation statistics) and weights in
one file, so anything (serving, export, the backtest) rebuilds the model from the file alone."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from recsys.features.encoding import FeatureEncoder
from towers.config import TowerConfig
from towers.model import TwoTower
from towers.train import TrainResult, build_model


def save_checkpoint(result: TrainResult, path: Path) -> Path:
    """Config + encoder + weights in one file, written to a temp name then renamed."""
    buffer = io.BytesIO()
    torch.save(
        {
            "config": result.config.to_dict(),
            "encoder": result.encoder.to_dict(),
            "state_dict": result.model.state_dict(),
            "best_epoch": result.best_epoch,
            "val_metrics": result.val_metrics,
        },
        buffer,
    )
    from recsys.io import atomic_write_bytes

    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def load_checkpoint(path: Path) -> tuple[TwoTower, FeatureEncoder, TowerConfig]:
    """Rebuild the model from the checkpoint file alone (eval mode)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)  # plain data, no pickle
    cfg = TowerConfig.from_dict(saved["config"])
    encoder = FeatureEncoder.from_dict(saved["encoder"])
    model = build_model(cfg, encoder)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, encoder, cfg
