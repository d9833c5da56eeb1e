"""Training in a second process, beside the tuning: its probe epochs, and the refit started
ahead.

The tuning (``towers.tuning.tune``) trains in one process on half the cores
(``TowerConfig.threads``), and a second thread in it adds little (README, "Benchmarks"); two
independent runs side by side each keep about 90% of their speed alone. So, with a core to
spare, work that does not wait on this process's next result runs in a child process:

- :class:`Probes`: the probe epochs of a tuning stage's candidates. Of the runs a stage has
  to probe, every other one trains in a child while this process trains the rest; the
  second stage is probed in a child while the first stage's leader trains on to its early
  stop (``towers.tuning._NextStage``). A probed run comes back whole (``Training.state``:
  weights, optimizer, generators, record) and goes on here if it leads.
- :class:`RefitAhead`: the refit on all data (the served model, ``towers.release``; the
  backtest's model of each cut). Its config is known before its length: once the tuning
  knows the run it will continue to its early stop (``tune``'s ``on_leader``), only that
  run's best epoch is left to learn. So the refit starts then and runs epoch after epoch,
  keeping each epoch's weights, while the leader trains on; :meth:`RefitAhead.result` takes
  the weights after exactly the chosen number of epochs (waiting for them if the refit is
  behind).

Every weight is the one the same run gives in this process alone, bit for bit
(``tests/towers/test_parallel.py``): a run owns its generators (``towers.train.Training``),
a fixed-length run has no schedule that depends on its length, and each process runs the
same number of torch threads. A refit started for a config that the tuning then does not
choose, or one whose process failed, is dropped and the refit runs here, as before; a
probe whose process failed trains here (both logged). A child exits when its parent goes,
removing their job folder, so a stopped pipeline run leaves no training behind; folders
left by a process killed while no child ran are removed by the next run (:func:`workdir`).

    python -m towers.parallel refit|probe <job folder> <parent pid>   # a child's side
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from towers.config import TowerConfig
from towers.cpu import child_env, cores
from towers.data import TowerData
from towers.train import Training, TrainResult, build_model

log = logging.getLogger(__name__)

STOP = "stop"  # a refit's job file that tells the child how many epochs are wanted


def beside(enabled: bool) -> bool:
    """Whether to train in a child process beside this one: asked for (``enabled``:
    ``Settings.train_in_parallel``) and a core to spare for it."""
    return enabled and cores() >= 2


def trained_alike(a: TowerConfig, b: TowerConfig) -> bool:
    """Whether two configs train the same weights: they may differ only in the popularity
    prior, which is applied outside training (``towers.model.ItemTower``) and chosen after
    it, and in the epoch cap, which a fixed-length run does not read."""

    def training(cfg: TowerConfig) -> TowerConfig:
        return replace(cfg, popularity_prior=0.0, popularity_feature=TowerConfig.popularity_feature,
                       epochs=TowerConfig.epochs)  # fmt: skip

    return training(a) == training(b)


class Child:
    """``python -m towers.parallel <kind> <job>`` started on a job folder, output in its log."""

    def __init__(self, kind: str, job: Path) -> None:
        self.job = job
        self.log_file = (job / "log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "towers.parallel", kind, str(job), str(os.getpid())],
            env=child_env(), stdout=self.log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log_tail(self) -> str:
        self.log_file.flush()
        return (self.job / "log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def workdir(base: Path | None = None) -> Path:
    """The folder that holds this process's job folders, ``<tmp>/recsys-parallel`` unless
    ``base``. Each job folder is named after the process that made it; folders left by a
    process that no longer runs (killed before it could remove them: the encoded rows, about
    600 MB at 1M interactions) are removed here."""
    root = base or Path(tempfile.gettempdir()) / "recsys-parallel"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _snapshot(job: Path, epoch: int) -> Path:
    return job / f"epoch-{epoch}.pt"


class RefitAhead:
    """The refit on ``data`` in a child process, started (:meth:`start`, the tuning's
    ``on_leader``) before its length is known (see the module's doc). The child trains at
    most the config's ``epochs`` and writes each epoch's weights; :meth:`result` stops it at
    the epoch asked for. Use as a context manager: leaving it stops the child."""

    def __init__(self, data: TowerData, workdir: Path | None = None) -> None:
        if data.val is not None:
            raise ValueError("a refit has no validation window: give data without one")
        self.data, self.workdir = data, workdir
        self.cfg: TowerConfig | None = None
        self.child: Child | None = None

    def __enter__(self) -> RefitAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, cfg: TowerConfig) -> None:
        """Start the refit of ``cfg``, stopping one started before for another config (one
        for a config that trains alike goes on)."""
        if self.cfg is not None and trained_alike(cfg, self.cfg):
            return
        self.close()
        job = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-refit-", dir=workdir(self.workdir)))
        self.started = time.perf_counter()
        torch.save({"cfg": cfg.to_dict(), "data": self.data}, job / "job.pt")
        self.cfg, self.child = cfg, Child("refit", job)
        log.info("refit started beside the tuning (process %d, %s)", self.child.proc.pid, job)

    def result(self, cfg: TowerConfig, epochs: int) -> TrainResult | None:
        """The refit of ``cfg`` after exactly ``epochs`` epochs, with ``cfg`` as its config;
        None (the child stopped, its folder removed) when none was started, when ``cfg``
        does not train as the config it was started with, or when the child failed
        (logged)."""
        if self.child is None or self.cfg is None:
            return None
        child, job = self.child, self.child.job
        try:
            if not trained_alike(cfg, self.cfg):
                log.info("the refit started ahead was for another config: dropped")
                return None
            if epochs > self.cfg.epochs:
                log.warning("%d epochs asked of a refit started for at most %d: dropped",
                            epochs, self.cfg.epochs)  # fmt: skip
                return None
            snapshot = _snapshot(job, epochs)
            if not snapshot.exists():
                stop = job / f"{STOP}.tmp"
                stop.write_text(str(epochs))
                stop.replace(job / STOP)
                code = child.proc.wait()
                if not snapshot.exists():
                    log.error("the refit started ahead failed (exit %s); refitting here:\n%s",
                              code, child.log_tail())  # fmt: skip
                    return None
            saved = torch.load(snapshot, weights_only=True)
            log.info("refit: %d epochs, taken %.1f s after it started", epochs,
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
        """Stop the child (if one runs) and remove its folder."""
        if self.child is not None:
            self.child.stop()
            shutil.rmtree(self.child.job, ignore_errors=True)
        self.cfg = self.child = None


class Probes:
    """Runs' probe epochs in child processes, one tuning's data written once for them all
    (see the module's doc). Use as a context manager: leaving it stops every child."""

    def __init__(self, data: TowerData, workdir: Path | None = None) -> None:
        self.data, self.workdir = data, workdir
        self.folder: Path | None = None
        self.children: list[Child] = []

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, run: Training, epochs: int) -> Child:
        """Train a copy of ``run`` (not yet trained here) to ``epochs`` epochs (or its end) in
        a child; :meth:`take` gives its state to ``run``."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-probes-",
                                                dir=workdir(self.workdir)))  # fmt: skip
            torch.save(self.data, self.folder / "data.pt")
        job = Path(tempfile.mkdtemp(prefix="run-", dir=self.folder))
        torch.save({"cfg": run.cfg.to_dict(), "epochs": epochs, "data": str(self.folder / "data.pt")},
                   job / "job.pt")  # fmt: skip
        child = Child("probe", job)
        self.children.append(child)
        log.info("probe (temperature %g, half-life %g days) started beside the tuning "
                 "(process %d)", run.cfg.temperature, run.cfg.recency_half_life_days,
                 child.proc.pid)  # fmt: skip
        return child

    def take(self, child: Child, run: Training) -> bool:
        """Wait for ``child`` and load the state it trained into ``run``; False (logged, the
        run left untrained) when the child failed."""
        code = child.proc.wait()
        state = child.job / "state.pt"
        taken = code == 0 and state.exists()
        if taken:
            run.load_state(torch.load(state, weights_only=False))  # our own file
        else:
            log.error("a probe in a child process failed (exit %s); training it here:\n%s",
                      code, child.log_tail())  # fmt: skip
        child.stop()
        shutil.rmtree(child.job, ignore_errors=True)
        return taken

    def close(self) -> None:
        for child in self.children:
            child.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _exit_with(parent: int, folder: Path) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent, removing ``folder``
    (its parent's job folder): a run whose pipeline was stopped (or killed) must not train
    on alone, nor leave its rows behind."""
    while os.getppid() == parent:
        time.sleep(1.0)
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(3)


def _refit(job: Path) -> None:
    """A refit's side: train epoch after epoch, writing each one's weights, until the epochs
    asked for in ``job/STOP`` are done (or ``cfg.epochs``)."""
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


def _probe(job: Path) -> None:
    """A probe's side: train the run its epochs, then write its whole state."""
    spec = torch.load(job / "job.pt", weights_only=False)  # our own file, from Probes
    data = torch.load(spec["data"], weights_only=False)
    run = Training(TowerConfig.from_dict(spec["cfg"]), data, progress=False)
    while not run.done and len(run.history) < spec["epochs"]:
        run.epoch()
    part = job / "state.tmp"
    torch.save(run.state(), part)
    part.replace(job / "state.pt")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kind, folder, parent = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    # A refit's folder is its own; a probe's sits in its tuning's folder, with the rows.
    own = folder if kind == "refit" else folder.parent
    threading.Thread(target=_exit_with, args=(parent, own), daemon=True).start()
    {"refit": _refit, "probe": _probe}[kind](folder)
