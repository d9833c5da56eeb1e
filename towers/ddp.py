"""Distributed training: one two-tower run by N processes under torch.distributed (gloo),
launched by torchrun as a subprocess, with the results of one process and its global batch.

Each rank trains on its shard of every global batch of ``cfg.batch_size`` rows: all ranks
draw the same epoch order and the same uniform negatives from the run's seed, and rank r
takes the r-th of N equal slices of each batch (a batch of g rows keeps N * (g // N), so
at most N - 1 rows of the epoch's last batch sit the epoch out). The model is wrapped in
DistributedDataParallel, and the in-batch negatives stay global: the item vectors, their ids
and the uniform negatives' vectors (each rank embeds M / N of them) are all-gathered with
autograd (:class:`_AllGather`, blocking collectives), so every row is scored against
the candidates of the whole global batch and the averaged gradient is one process's
(``tests/towers/test_ddp.py`` checks the first step's gradient). Validation runs on rank 0
only; its scores are broadcast, so every rank takes the same early-stopping decisions from
the same history. Rank 0 writes the weights; the caller rebuilds the ``TrainResult`` and
saves it with ``towers.checkpoint`` as any other run.

One host: ``torchrun --standalone --nproc-per-node N -m towers.ddp <job folder>``. N hosts
(settings ``train_nnodes``, ``train_rdzv_endpoint``): every host runs
``torchrun --nnodes H --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint host:port
--rdzv-id <job> -m towers.ddp <job folder>`` on the same job folder (a shared mount); the
pipeline's host logs that command and starts its own.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from towers.config import TowerConfig
from towers.cpu import child_env, cores
from towers.crop import cropped
from towers.data import TowerData, take
from towers.losses import bce_loss, softmax_loss, triplet_loss
from towers.model import TwoTower
from towers.train import Training, TrainResult, build_model, evaluate_window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """Where and how many processes train (from Settings: :func:`launch_of`)."""

    processes: int = 2  # per host
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # host:port with several hosts; None: standalone
    timeout_seconds: float = 1800.0  # a collective waiting longer fails the run
    workdir: Path | None = None  # where job folders go (shared by the hosts); None: tmp


def launch_of(settings: Any) -> Launch | None:
    """The settings' launch, or None when training stays in this process."""
    if settings.train_processes * settings.train_nnodes == 1:
        return None
    # Several hosts share the job folder through the data folder; one host keeps it in tmp.
    shared = settings.paths.data_dir / ".ddp" if settings.train_nnodes > 1 else None
    return Launch(processes=settings.train_processes, nnodes=settings.train_nnodes,
                  rdzv_endpoint=settings.train_rdzv_endpoint,
                  timeout_seconds=settings.train_timeout_seconds, workdir=shared)  # fmt: skip


class _Towers(torch.nn.Module):
    """Both towers in one forward, so that DistributedDataParallel sees every step."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: dict, items: dict, negatives: dict | None) -> tuple:
        extra = None if negatives is None else self.model.item_tower(negatives)
        return self.model.user_tower(users), self.model.item_tower(items), extra


class _AllGather(torch.autograd.Function):
    """Every rank's (b, ...) tensor concatenated in rank order, the gradient of each part
    summed over ranks and returned to the rank that computed it.

    Both directions are blocking collectives. The functional ``all_gather_single_autograd``
    used before returned a tensor whose gather was still running on gloo's threads while
    the step went on (the next gather, the item ids' gather, DDP's bucket all-reduces); one
    CI run lost a rank to a heap corruption in that window (``malloc(): unaligned tcache
    chunk``). Here nothing is in flight but DDP's own all-reduces."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), len(tensor)
        return _all_gathered(tensor.contiguous())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)  # all_reduce writes in place
        dist.all_reduce(total)  # every rank's gradient with respect to every part
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (b, ...) concatenated in rank order (N * b, ...), gradients
    flowing back to the rank that computed each part."""
    return _AllGather.apply(tensor)


def _all_gathered(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated in rank order, no gradient (a blocking gather)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


class DistributedTraining(Training):
    """A :class:`Training` run as one rank of the process group (initialised by the caller)."""

    def __init__(self, cfg: TowerConfig, data: TowerData, epochs: int | None = None) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if cfg.mixed_negatives % self.world:
            raise ValueError(f"mixed_negatives ({cfg.mixed_negatives}) must divide among "
                             f"{self.world} processes: set a multiple of train_processes")  # fmt: skip
        super().__init__(cfg, data, progress=False, epochs=epochs)
        self.towers = DistributedDataParallel(_Towers(self.model))
        # Dropout masks differ per rank (the data order and negatives come from self.gen).
        torch.manual_seed(cfg.seed + self.rank)
        self.rng = torch.get_rng_state()

    def shard(
        self, order: torch.Tensor, users: dict[str, torch.Tensor]
    ) -> tuple[TowerData, list[slice], list[int]]:
        """This rank's rows of each global batch of ``order``: the rows gathered once, each
        batch's slice of them, and where the slice starts in its global batch. ``users``:
        the epoch's user inputs (:meth:`Training.epoch_users`)."""
        b, n, world = self.cfg.batch_size, len(order), self.world
        mine, slices, offsets, at = [], [], [], 0
        for start in range(0, n, b):
            size = (min(start + b, n) - start) // world
            if size == 0:
                continue
            mine.append(order[start + self.rank * size : start + (self.rank + 1) * size])
            slices.append(slice(at, at + size))
            offsets.append(self.rank * size)
            at += size
        rows = torch.cat(mine)
        ages = self.data.train_age_days
        local = replace(self.data, train_users=take(users, rows),
                        train_items=take(self.data.train_items, rows),
                        train_age_days=None if ages is None else ages[rows])  # fmt: skip
        return local, slices, offsets

    def batch_loss(self, local: TowerData, rows: slice, offset: int) -> torch.Tensor:
        """This rank's loss on its ``rows`` of a global batch, scaled so that the average
        over ranks (DistributedDataParallel's) is the loss of the global batch."""
        cfg, rank, world = self.cfg, self.rank, self.world
        negatives = extra_ids = extra_lq = None
        if cfg.mixed_negatives > 0:
            drawn, n_items = self.sampler(cfg.mixed_negatives, self.gen)  # same on every rank
            share = cfg.mixed_negatives // world
            negatives = take(drawn, slice(rank * share, (rank + 1) * share))
            extra_ids = drawn["item"]
            extra_lq = torch.full((cfg.mixed_negatives,), math.log(cfg.mixed_negatives / n_items))
        item_batch = take(local.train_items, rows)
        user_batch = cropped(self.crop, take(local.train_users, rows))
        users, items, mine = self.towers(user_batch, item_batch, negatives)
        extra = None if mine is None else _gather(mine)  # (M, d)
        weights = None
        if cfg.recency_half_life_days > 0:
            if local.train_age_days is None:
                raise ValueError("recency_half_life_days needs TowerData.train_age_days")
            weights = 0.5 ** (local.train_age_days[rows] / cfg.recency_half_life_days)  # (b,)
        if cfg.loss == "softmax":
            ids = _all_gathered(item_batch["item"])  # (G,)
            log_q = self.data.log_q[ids] + math.log(len(ids))
            loss = softmax_loss(users, _gather(items), ids, log_q, cfg, extra, extra_ids,
                                extra_lq, weights, offset=offset)  # fmt: skip
        elif extra is None:
            raise ValueError(f"loss {cfg.loss!r} needs mixed_negatives > 0 (its sampled negatives)")
        elif cfg.loss == "bce":
            loss = bce_loss(users, items, extra, cfg, weights)
        else:
            loss = triplet_loss(users, items, extra, cfg, weights)
        if weights is None:
            return loss
        # A weighted mean over the global batch: this rank's share of the total weight.
        total = weights.sum().detach().clone()
        dist.all_reduce(total)
        return loss * (weights.sum().detach() * world / total)

    def train_epoch(self, epoch: int) -> float:
        order = torch.randperm(len(self.data.train_items["item"]), generator=self.gen)
        local, slices, offsets = self.shard(order, self.epoch_users(len(order)))
        total = torch.zeros(2, dtype=torch.float64)  # (loss sum, rows) over this rank's rows
        for rows, offset in zip(slices, offsets, strict=True):
            loss = self.batch_loss(local, rows, offset)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += torch.tensor([loss.item() * (rows.stop - rows.start), rows.stop - rows.start])
        dist.all_reduce(total)
        return float(total[0] / total[1])

    def validate(self) -> dict[str, Any]:
        assert self.data.val is not None
        scores = [evaluate_window(self.model, self.data.val)["all"] if self.rank == 0 else None]
        dist.broadcast_object_list(scores, src=0)
        return scores[0]  # type: ignore[return-value]


def _worker(job: Path) -> None:
    """One rank of ``torchrun -m towers.ddp <job>``: train, rank 0 writes ``result.pt``."""
    spec = torch.load(job / "job.pt", weights_only=False)  # our own file, from train_distributed
    dist.init_process_group("gloo", timeout=timedelta(seconds=spec["timeout_seconds"]))
    try:
        run = DistributedTraining(TowerConfig.from_dict(spec["cfg"]), spec["data"], spec["epochs"])
        while not run.done:
            run.epoch()
        if run.rank == 0:
            result = run.result()
            saved = {"state_dict": result.model.state_dict(), "best_epoch": result.best_epoch,
                     "history": result.history, "seconds": result.seconds}  # fmt: skip
            torch.save(saved, job / "result.tmp")
            os.replace(job / "result.tmp", job / "result.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def threads_per_process(cfg: TowerConfig, processes: int) -> int:
    """Torch threads of each of ``processes`` ranks on this host: ``cfg.threads``, else the
    cores this process may run on shared among them (at least one each)."""
    return cfg.threads or max(1, cores() // processes)


def run_torchrun(launch: Launch, target: list[str], logs: Path, threads: int) -> None:
    """``torchrun ... <target>`` (a script and its arguments, or ``-m module ...``) on this
    host, every rank's output in ``logs``. A failed rank fails the call: a RuntimeError that
    holds the end of each rank's stderr; torchrun stops the other ranks (no restarts)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(launch.nnodes),
           "--nproc-per-node", str(launch.processes), "--max-restarts", "0",
           "--log-dir", str(logs), "--redirects", "3"]  # fmt: skip
    if launch.rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", launch.rdzv_endpoint,
                "--rdzv-id", logs.parent.name]  # fmt: skip
        log.info("other hosts: %s", " ".join(["torchrun", *cmd[3:], *target]))
    env = child_env(OMP_NUM_THREADS=str(threads))
    done = subprocess.run([*cmd, *target], env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return
    ranks = []
    for err in sorted(logs.glob("**/stderr.log")):
        text = err.read_text(errors="replace").strip()
        if text:
            ranks.append(f"--- local rank {err.parent.name} stderr (end) ---\n{text[-4000:]}")
    raise RuntimeError(
        f"distributed training failed (torchrun exit {done.returncode}):\n"
        + "\n".join(ranks or [f"--- torchrun stderr (end) ---\n{done.stderr[-4000:]}"])
    )


def train_distributed(
    cfg: TowerConfig, data: TowerData, launch: Launch, epochs: int | None = None
) -> TrainResult:
    """``towers.train.train(cfg, data, epochs=epochs)`` run by ``launch``'s processes: early
    stopping on ``data.val`` (on rank 0), or exactly ``epochs`` epochs."""
    if launch.workdir is not None:
        launch.workdir.mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(prefix="train-", dir=launch.workdir))
    try:
        spec = {"cfg": cfg.to_dict(), "data": data, "epochs": epochs,
                "timeout_seconds": launch.timeout_seconds}  # fmt: skip
        torch.save(spec, job / "job.pt")
        threads = threads_per_process(cfg, launch.processes)
        run_torchrun(launch, ["-m", "towers.ddp", str(job)], job / "logs", threads)
        saved = torch.load(job / "result.pt", weights_only=True)
    finally:
        shutil.rmtree(job, ignore_errors=True)
    model = build_model(cfg, data.encoder)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    history, best = saved["history"], saved["best_epoch"]
    return TrainResult(model=model, encoder=data.encoder, config=cfg, best_epoch=best,
                       val_metrics=history[best - 1].get("val", {}) if history else {},
                       history=history, seconds=saved["seconds"])  # fmt: skip


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
