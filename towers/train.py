"""Training: `train(cfg, data) -> TrainResult`, callable from Dagster, a CLI or a test.

AdamW, one of three losses (see `towers.model`), early stopping on validation recall@K,
deterministic by seed (data order, negatives and dropout all come from seeded generators;
one process, fixed thread count). The checkpoint carries the config, the encoder
(vocabularies and normalisation statistics) and the weights: serving rebuilds the user
tower from the file alone.
"""

from __future__ import annotations

import ctypes
import io
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from towers.config import TowerConfig
from towers.data import ITEM_NUMS, EvalWindow, FeatureEncoder, TowerData, take
from towers.model import TwoTower, bce_loss, logits, softmax_loss, triplet_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: TwoTower
    encoder: FeatureEncoder
    config: TowerConfig
    best_epoch: int
    val_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def build_model(cfg: TowerConfig, encoder: FeatureEncoder) -> TwoTower:
    return TwoTower(
        cfg,
        n_users=encoder.n_users,
        n_items=encoder.n_items,
        cat_sizes=encoder.cat_sizes(),
        n_genres=len(encoder.genres),
        user_nums=4,
        item_nums=10,
        item_stats=[encoder.stats[name] for name, _ in ITEM_NUMS],
    )


def _env_threads() -> int:
    """OMP_NUM_THREADS as a thread count (0 when unset); its first level if nested."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"OMP_NUM_THREADS={value!r}: expected a positive number of threads")
    return int(value)


def set_threads(cfg: TowerConfig) -> int:
    """Torch intra-op threads: `cfg.threads`, else OMP_NUM_THREADS, else half the cores
    this process may run on (at least one; see `TowerConfig.threads` for the measurements)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = cfg.threads or _env_threads() or max(1, (cores or 1) // 2)
    if threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        log.warning(
            "OMP_WAIT_POLICY is %r, not PASSIVE: %d spinning torch threads collapse when "
            "another process shares a core (import recsys before torch, or set threads=1)",
            os.environ.get("OMP_WAIT_POLICY"), threads,
        )  # fmt: skip
    torch.set_num_threads(threads)
    return threads


def keep_large_blocks() -> bool:
    """Ask glibc to serve blocks up to 256 MB from its heap and to keep up to 512 MB freed.

    Every step allocates the embedding tables' dense gradients afresh (a 22K-user table is
    5.7 MB). By default glibc maps such blocks from the kernel and unmaps them when freed,
    so each step page-faults all of that memory in again: measured at 1M synthetic, one
    thread, 15% of the step's CPU time (49-51 ms a step against 42-43 ms with this). Nothing
    computed changes. Returns whether the allocator took the settings (False off glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 256 << 20) and mallopt(m_trim_threshold, 512 << 20))


@torch.no_grad()
def embed(tower: torch.nn.Module, batch: dict[str, torch.Tensor], size: int = 8192) -> torch.Tensor:
    """Vectors of every row of an encoded batch, in eval mode, in chunks."""
    tower.eval()
    n = len(next(iter(batch.values())))
    parts = [tower(take(batch, torch.arange(i, min(i + size, n)))) for i in range(0, n, size)]
    return torch.cat(parts) if parts else torch.empty(0, 0)


def tower_scores(
    model: TwoTower, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
) -> Callable[[np.ndarray], np.ndarray]:
    """``score_fn(rows) -> (B, N)``: the model's scores of encoded users (rows: positions in
    ``users``) against encoded items; both towers run once, in eval mode."""
    u, v = embed(model.user_tower, users), embed(model.item_tower, items)  # (U, d), (N, d[+1])
    return lambda rows: logits(u[torch.from_numpy(rows)], v, model.cfg).numpy()  # (B, N)


def evaluate_window(
    model: TwoTower, window: EvalWindow, ks: tuple[int, ...] = (10, 20, 50)
) -> dict:
    from towers.evaluate import rank_metrics

    return rank_metrics(tower_scores(model, window.users, window.items), window.split, ks)


Sampler = Callable[[int, torch.Generator], tuple[dict[str, torch.Tensor], int]]


def negative_sampler(data: TowerData, cfg: TowerConfig) -> Sampler:
    """``sample(m, gen) -> (item-tower inputs of m negatives, items drawn from)``: items
    drawn uniformly (mixed negatives, Yang et al. 2020), with their features taken as
    ``cfg.negatives_from`` says (see TowerConfig)."""
    if cfg.negatives_from == "catalogue":
        n = len(data.catalogue["item"])
        return lambda m, gen: (take(data.catalogue, torch.randint(0, n, (m,), generator=gen)), n)
    # Training rows grouped by item: an item drawn uniformly, then one of its rows.
    ids = data.train_items["item"]
    order = torch.argsort(ids, stable=True)  # (R,) rows sorted by item
    items, counts = torch.unique_consecutive(ids[order], return_counts=True)  # (I,), (I,)
    starts = torch.cumsum(counts, 0) - counts  # (I,)

    def sample(m: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
        which = torch.randint(0, len(items), (m,), generator=gen)  # (m,)
        offset = (torch.rand(m, generator=gen) * counts[which]).long()  # (m,) < count
        return take(data.train_items, order[starts[which] + offset]), len(items)

    return sample


def _loss(
    model: TwoTower,
    data: TowerData,
    rows: torch.Tensor,
    cfg: TowerConfig,
    gen: torch.Generator,
    sample: Sampler,
) -> torch.Tensor:
    users = model.user_tower(take(data.train_users, rows))  # (B, d)
    item_batch = take(data.train_items, rows)
    items = model.item_tower(item_batch)  # (B, d)
    extra = extra_ids = extra_lq = None
    if cfg.mixed_negatives > 0:
        negatives, n_items = sample(cfg.mixed_negatives, gen)
        extra, extra_ids = model.item_tower(negatives), negatives["item"]
        # Expected copies in the candidate pool: uniform draws M/N each.
        extra_lq = torch.full((cfg.mixed_negatives,), math.log(cfg.mixed_negatives / n_items))
    weights = None
    if cfg.recency_half_life_days > 0:
        if data.train_age_days is None:
            raise ValueError("recency_half_life_days needs TowerData.train_age_days")
        weights = 0.5 ** (data.train_age_days[rows] / cfg.recency_half_life_days)  # (B,)
    if cfg.loss == "softmax":
        # In-batch items appear about B * p(item) times per batch.
        log_q = data.log_q[item_batch["item"]] + math.log(len(rows))
        return softmax_loss(
            users, items, item_batch["item"], log_q, cfg, extra, extra_ids, extra_lq, weights
        )
    if extra is None:
        raise ValueError(f"loss {cfg.loss!r} needs mixed_negatives > 0 (its sampled negatives)")
    if cfg.loss == "bce":
        return bce_loss(users, items, extra, cfg, weights)
    return triplet_loss(users, items, extra, cfg, weights)


def _optimizer(model: TwoTower, cfg: TowerConfig) -> torch.optim.Optimizer:
    """AdamW; the embedding tables (ids, categories) in their own group at `embedding_lr`."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    embeddings = [p for p in model.parameters() if id(p) in tables]
    others = [p for p in model.parameters() if id(p) not in tables]
    groups: list[dict[str, Any]] = [
        {"params": others},
        {"params": embeddings, "lr": cfg.embedding_lr},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        # One fused kernel per step instead of a dozen passes over every parameter tensor:
        # the embedding tables get a dense update each step, and the unfused update of a
        # 1M-interaction run's tables took a fifth of the step.
        fused=True,
    )


def train(
    cfg: TowerConfig, data: TowerData, progress: bool = True, epochs: int | None = None
) -> TrainResult:
    """Fit a two-tower model on `data.train_*`.

    By default the epoch is chosen on `data.val` (early stopping on recall@`select_k`, the
    best epoch's weights are kept). With `epochs`, exactly that many epochs run and the last
    weights are kept: the refit on train + validation for the test window, which has no
    validation window of its own (`data.val` is None) and reuses the epochs chosen before.
    """
    if data.val is None and epochs is None:
        raise ValueError("without a validation window, give the number of epochs to train")
    set_threads(cfg)
    keep_large_blocks()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg, data.encoder)
    sampler = negative_sampler(data, cfg)
    optimizer = _optimizer(model, cfg)
    n = len(data.train_items["item"])
    best, best_epoch, best_state, stale = -1.0, 0, None, 0
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    for epoch in range(1, (epochs or cfg.epochs) + 1):
        model.train()
        order = torch.randperm(n, generator=gen)
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        total = 0.0
        # disable=None: no bar when stderr is not a terminal (logs, CI), a bar otherwise.
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=None if progress else True, leave=False)
        for rows in bar:
            loss = _loss(model, data, rows, cfg, gen, sampler)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        entry: dict[str, Any] = {"epoch": epoch, "loss": total / n}
        if data.val is not None:
            entry["val"] = evaluate_window(model, data.val)["all"]
        entry["seconds"] = round(time.perf_counter() - started, 2)
        history.append(entry)
        if epochs is not None:  # fixed length: keep the last weights
            best_epoch = epoch
            log.info("epoch %d loss %.4f", epoch, total / n)
            continue
        score = entry["val"][f"recall@{cfg.select_k}"]
        log.info("epoch %d loss %.4f val recall@%d %.4f", epoch, total / n, cfg.select_k, score)
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        encoder=data.encoder,
        config=cfg,
        best_epoch=best_epoch,
        val_metrics=history[best_epoch - 1].get("val", {}) if history else {},
        history=history,
        seconds=round(time.perf_counter() - started, 2),
    )


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
