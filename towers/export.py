"""The user tower as an ONNX graph: what the online server runs (``serving.tower``).

A recommendation request runs the user tower on one row. Through PyTorch that is ~15
operator calls, each with PyTorch's dispatch overhead: p50 0.32 ms traced (TorchScript),
0.46 ms eager, on one core of the 2-core machine this project is measured on; the same graph
in ONNX Runtime takes 0.07 ms (``benchmarks/bench_serving.py``, "user tower only"). The
graph is exported once per model version, by the pipeline that trains it, and kept in the
version's folder beside ``checkpoint.pt``; the server checks it against the checkpoint's
tower before using it, and falls back to the traced tower when it is missing or differs.

Exported with ``torch.onnx.export(dynamo=True)`` (the ``torch.export``-based exporter; the
TorchScript one is deprecated), batch size dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from recsys.features.encoding import (
    HISTORY_FEATURES,
    PAD,
    USER_INPUTS,
    USER_OUTPUT,
    USER_TOWER_FILE,
    FeatureEncoder,
)
from recsys.io import atomic_write_bytes
from towers.model import UserTower

log = logging.getLogger(__name__)


class _Positional(nn.Module):
    """The user tower with one argument per input (ONNX graphs take no dicts)."""

    def __init__(self, tower: UserTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(
        self,
        user: torch.Tensor,
        cats: torch.Tensor,
        nums: torch.Tensor,
        affinity: torch.Tensor,
        history: torch.Tensor,
        history_feats: torch.Tensor,
    ) -> torch.Tensor:
        batch = {"user": user, "cats": cats, "nums": nums, "affinity": affinity,
                 "history": history, "history_feats": history_feats}  # fmt: skip
        return self.tower(batch)


def example_batch(encoder: FeatureEncoder, rows: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes and types (unknown users; row 0 with no history, the
    others with an unknown item first)."""
    history = torch.full((rows, encoder.history), PAD, dtype=torch.int64)
    history[1:, 0] = 0
    return {
        "user": torch.zeros(rows, dtype=torch.int64),
        "cats": torch.zeros(rows, len(encoder.cat_sizes()), dtype=torch.int64),
        "nums": torch.zeros(rows, encoder.user_width, dtype=torch.float32),
        "affinity": torch.zeros(rows, len(encoder.genres), dtype=torch.float32),
        "history": history,
        "history_feats": torch.zeros(rows, encoder.history, HISTORY_FEATURES),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines, warnings (missing torchvision ops...) and its
    optimiser's INFO log lines (one per graph rewrite) silenced."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def user_tower_onnx(tower: UserTower, encoder: FeatureEncoder) -> bytes:
    """The eval-mode user tower as a serialised ONNX model (dynamic batch size)."""
    was_training = tower.training
    tower.eval()
    example = example_batch(encoder)
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                _Positional(tower),
                tuple(example[name] for name in USER_INPUTS),
                input_names=list(USER_INPUTS),
                output_names=[USER_OUTPUT],
                dynamic_shapes={name: {0: batch} for name in USER_INPUTS},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        tower.train(was_training)
    assert program is not None
    return bytes(program.model_proto.SerializeToString())


def export_user_tower(tower: UserTower, encoder: FeatureEncoder, folder: Path) -> Path:
    """Write ``folder/user_tower.onnx`` (temp file, then rename)."""
    path = Path(folder) / USER_TOWER_FILE
    atomic_write_bytes(path, user_tower_onnx(tower, encoder))
    log.info("exported the user tower to %s", path)
    return path


def export_version(folder: Path) -> Path:
    """Export the user tower of the checkpoint in a model version's folder being built (a
    complete version is never written to: recsys.registry). Returns the path written."""
    from towers.checkpoint import load_checkpoint

    model, encoder, _ = load_checkpoint(Path(folder) / "checkpoint.pt")
    return export_user_tower(model.user_tower, encoder, Path(folder))
