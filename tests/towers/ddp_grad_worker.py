"""Run by tests/towers/test_ddp.py under torchrun (not collected by pytest): the first step's
gradient of every parameter under DistributedTraining (all ranks), and on rank 0 the same
step of one process with the global batch; rank 0 saves both for the test to compare.

    torchrun --standalone --nproc-per-node 2 ddp_grad_worker.py <job folder>
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from towers.config import TowerConfig
from towers.data import take
from towers.ddp import DistributedTraining
from towers.train import Training, _loss


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def main(job: Path) -> None:
    spec = torch.load(job / "job.pt", weights_only=False)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    out = {}
    for name, values in spec["configs"].items():
        cfg, data = TowerConfig.from_dict(values), spec["data"]
        run = DistributedTraining(cfg, data, epochs=1)
        order = torch.randperm(len(data.train_items["item"]), generator=run.gen)
        local, slices, offsets = run.shard(order, run.epoch_users(len(order)))
        run.batch_loss(local, slices[0], offsets[0]).backward()
        if dist.get_rank() == 0:
            one = Training(cfg, data, progress=False, epochs=1)
            order = torch.randperm(len(data.train_items["item"]), generator=one.gen)
            shuffled = replace(data, train_users=take(one.epoch_users(len(order)), order),
                               train_items=take(data.train_items, order),
                               train_age_days=data.train_age_days[order])  # fmt: skip
            rows = slice(0, cfg.batch_size)
            _loss(one.model, shuffled, rows, cfg, one.gen, one.sampler, one.crop).backward()
            out[name] = {"ddp": grads(run.model), "one": grads(one.model)}
    if dist.get_rank() == 0:
        torch.save(out, job / "grads.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
