"""The user tower of a loaded version: ONNX Runtime when the version has its graph, else
TorchScript, else the eager module; each checked against the checkpoint's module first.

All three take the numpy arrays of ``recsys.features.row_encoding.RowEncoder.arrays`` and
return the (rows, d) user vectors as float32 numpy.

* ``onnx``: the version folder's ``user_tower.onnx`` (written by the pipeline with
  ``towers.export``) in an ONNX Runtime session on ``threads`` threads, no spinning. About
  5x faster than TorchScript for one row (``towers.export`` has the figures). Used only if
  its outputs on a few different rows are within ``ONNX_ATOL`` of the eager module's: a
  graph exported from other weights (a stale or foreign file) is never served.
* ``torchscript``: the tower traced on an example row, used when it gives exactly the eager
  outputs on those rows; the fallback for versions without a graph.
* ``eager``: the module itself.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from recsys.features.encoding import USER_INPUTS, USER_OUTPUT, USER_TOWER_FILE

if TYPE_CHECKING:
    import torch

    from towers.model import UserTower

# torch and towers are imported inside the functions that run the PyTorch fallbacks: the
# server imports neither until a two-tower version is loaded.

log = logging.getLogger(__name__)

TowerKind = Literal["onnx", "torchscript", "eager"]
Arrays = dict[str, np.ndarray]
TowerFn = Callable[[Arrays], np.ndarray]
# Largest difference allowed between ONNX Runtime's and PyTorch's user vectors (unit
# vectors, float32; measured ~3e-7: kernels sum in another order).
ONNX_ATOL = 1e-5


class OnnxTower:
    """An ONNX Runtime session over an exported user tower."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads would spin waiting for work: CPU the other requests need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(USER_INPUTS):
            raise ValueError(f"the graph's inputs are {names}, not {list(USER_INPUTS)}")
        self.outputs = [USER_OUTPUT]

    def __call__(self, arrays: Arrays) -> np.ndarray:
        return np.asarray(self.session.run(self.outputs, arrays)[0])


def torch_tower(module: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> TowerFn:
    import torch

    def run(arrays: Arrays) -> np.ndarray:
        with torch.no_grad():
            batch = {name: torch.from_numpy(value) for name, value in arrays.items()}
            return module(batch).numpy()

    return run


def traced_tower(tower: UserTower, examples: list[Arrays]) -> TowerFn | None:
    """The tower traced on an example row, if it gives exactly the eager outputs."""
    import torch

    batches = [{k: torch.from_numpy(v) for k, v in e.items()} for e in examples]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace(tower, (batches[1],), strict=False, check_trace=False)
            if all(torch.equal(traced(b), tower(b)) for b in batches):
                return torch_tower(traced)
            log.warning("traced user tower differs from the eager one")
    except Exception:  # tracing is an optimisation: never a reason not to serve
        log.exception("cannot trace the user tower")
    return None


def _onnx(
    folder: Path, examples: list[Arrays], want: list[np.ndarray], threads: int
) -> OnnxTower | None:
    path = folder / USER_TOWER_FILE
    if not path.exists():
        log.warning("%s is missing: the user tower runs in PyTorch (slower); the pipeline "
                    "exports it when it trains a version (towers.export)", path)  # fmt: skip
        return None
    try:
        tower = OnnxTower(path, threads)
        got = [tower(example) for example in examples]
    except Exception:  # a truncated or foreign file: serve with PyTorch instead
        log.exception("cannot run %s: the user tower runs in PyTorch", path)
        return None
    for a, b in zip(got, want, strict=True):
        if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=ONNX_ATOL):
            gap = np.abs(a - b).max() if a.shape == b.shape else f"shape {a.shape} != {b.shape}"
            log.error("%s does not compute the checkpoint's user tower (difference %s): "
                      "the user tower runs in PyTorch", path, gap)  # fmt: skip
            return None
    return tower


def load_user_tower(
    tower: UserTower, folder: Path, examples: list[Arrays], threads: int = 1
) -> tuple[TowerFn, TowerKind]:
    """The fastest correct way to run ``tower`` (eval mode), and which it is."""
    tower.eval()
    eager = torch_tower(tower)
    want = [eager(e) for e in examples]
    onnx = _onnx(Path(folder), examples, want, threads)
    if onnx is not None:
        return onnx, "onnx"
    traced = traced_tower(tower, examples)
    if traced is not None:
        return traced, "torchscript"
    return eager, "eager"
