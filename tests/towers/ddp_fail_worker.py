"""Run by tests/towers/test_ddp.py under torchrun (not collected by pytest): rank 1 fails
while rank 0 waits for it in a collective, which would hang if nobody stopped it."""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

dist.init_process_group("gloo", timeout=timedelta(seconds=300))
if dist.get_rank() == 1:
    raise ValueError("rank 1 fails on purpose")
dist.barrier()
