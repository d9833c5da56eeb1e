"""The refit on all data, started ahead: in a child process, beside the tuning's leader.

The served model is refit on every row before ``as_of`` for the epochs that early stopping
chose on validation (``towers.release``). Run after the tuning, it adds its whole length to
the asset's wall time, on one core of a machine that has more: the tuning is one process
(``TowerConfig.threads``: half the cores), and a second thread in it adds little (README,
"Benchmarks"). But the refit's config is known before its length: once the tuning's last
stage has picked the run that goes on to its early stop, only that run's epoch count is left
to learn. So :class:`RefitAhead` starts the refit then, in its own process on the other
half of the cores, and lets it run epoch after epoch, keeping each epoch's weights, while
the leader trains on; :meth:`RefitAhead.result` takes the weights after exactly the chosen
number of epochs (waiting for them if the refit is behind).

The weights are those of the same refit run in this process (``train(cfg, data,
epochs=n)``, bit for bit, `tests/towers/test_ahead.py`): a fixed-length run has no
schedule that depends on its length, it owns its generators (``towers.train.Training``),
and each process runs the same number of torch threads. A refit started for a config that
the tuning then does not choose, or one whose process failed, is dropped and the refit
runs here, as before (logged).

    python -m towers.ahead <job folder>    # the child's side, started by RefitAhead
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from towers.config import TowerConfig
from towers.data import TowerData
from towers.train import Training, TrainResult, build_model

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STOP = "stop"  # the job folder's file that tells the child how many epochs are wanted


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def trained_alike(a: TowerConfig, b: TowerConfig) -> bool:
    """Whether two configs train the same weights: they may differ only in the popularity
    prior, which is applied outside training (``towers.model.ItemTower``) and chosen after
    it, and in the epoch cap, which a fixed-length run does not read."""

    def training(cfg: TowerConfig) -> TowerConfig:
        return replace(cfg, popularity_prior=0.0, popularity_feature=TowerConfig.popularity_feature,
                       epochs=TowerConfig.epochs)  # fmt: skip

    return training(a) == training(b)


def _snapshot(job: Path, epoch: int) -> Path:
    return job / f"epoch-{epoch}.pt"


class RefitAhead:
    """A fixed-length run of ``cfg`` on ``data`` in a child process, started before its
    length is known (see the module's doc). The child trains at most ``cfg.epochs`` epochs
    and writes each epoch's weights; :meth:`result` stops it at the epoch asked for."""

    def __init__(self, cfg: TowerConfig, data: TowerData, workdir: Path | None = None) -> None:
        if data.val is not None:
            raise ValueError("a refit has no validation window: give data without one")
        self.cfg, self.data = cfg, data
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        self.job = Path(tempfile.mkdtemp(prefix="refit-", dir=workdir))
        self.started = time.perf_counter()
        torch.save({"cfg": cfg.to_dict(), "data": data}, self.job / "job.pt")
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
               # The child runs this very code, whatever the interpreter's installed copy.
               "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *([path] if path else [])])}  # fmt: skip
        self.log_file = (self.job / "log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "towers.ahead", str(self.job)],
                                     env=env, stdout=self.log_file, stderr=subprocess.STDOUT)  # fmt: skip
        log.info("refit on all data started beside the tuning (process %d, %s)", self.proc.pid,
                 self.job)  # fmt: skip

    def result(self, cfg: TowerConfig, epochs: int) -> TrainResult | None:
        """The refit of ``cfg`` after exactly ``epochs`` epochs, with ``cfg`` as its config;
        None (the child stopped, its folder removed) when ``cfg`` does not train as the
        config this refit was started with, or when the child failed (logged)."""
        try:
            if not trained_alike(cfg, self.cfg):
                log.info("the refit started ahead was for another config: dropped")
                return None
            if epochs > self.cfg.epochs:
                log.warning("%d epochs asked of a refit started for at most %d: dropped",
                            epochs, self.cfg.epochs)  # fmt: skip
                return None
            snapshot = _snapshot(self.job, epochs)
            if not snapshot.exists():
                stop = self.job / f"{STOP}.tmp"
                stop.write_text(str(epochs))
                stop.replace(self.job / STOP)
                code = self.proc.wait()
                if not snapshot.exists():
                    self.log_file.flush()
                    tail = (self.job / "log").read_text(errors="replace")[-4000:]
                    log.error("the refit started ahead failed (exit %s); refitting here:\n%s",
                              code, tail)  # fmt: skip
                    return None
            saved = torch.load(snapshot, weights_only=True)
            log.info("refit on all data: %d epochs, taken %.1f s after it started", epochs,
                     time.perf_counter() - self.started)  # fmt: skip
        finally:
            self.close()
        model = build_model(cfg, self.data.encoder)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return TrainResult(model=model, encoder=self.data.encoder, config=cfg,
                           best_epoch=epochs, val_metrics={}, history=saved["history"],
                           seconds=saved["seconds"])  # fmt: skip

    def close(self) -> None:
        """Stop the child (if it still runs) and remove its folder."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()
        shutil.rmtree(self.job, ignore_errors=True)


def _child(job: Path) -> None:
    """The child's side: train epoch after epoch, writing each one's weights, until the
    epochs asked for in ``job/STOP`` are done (or ``cfg.epochs``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = torch.load(job / "job.pt", weights_only=False)  # our own file, from RefitAhead
    cfg = TowerConfig.from_dict(spec["cfg"])
    run = Training(cfg, spec["data"], progress=False, epochs=cfg.epochs)

    stop = job / STOP
    while not run.done:
        if stop.exists() and len(run.history) >= int(stop.read_text()):
            break
        run.epoch()
        state: dict[str, Any] = {"state_dict": run.model.state_dict(), "history": run.history,
                                 "seconds": round(run.seconds, 2)}  # fmt: skip
        epoch, part = len(run.history), job / "epoch.tmp"
        torch.save(state, part)
        part.replace(_snapshot(job, epoch))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
