"""Training: `train(cfg, data) -> TrainResult`, callable from Dagster, a CLI or a test.

AdamW, one of three losses (see `towers.losses`), early stopping on validation recall@K,
deterministic by seed (data order, negatives and dropout all come from seeded generators;
one process, fixed thread count: ``towers.cpu``). Checkpoints: ``towers.checkpoint``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from recsys.features.encoding import OOV, FeatureEncoder
from towers.config import TowerConfig
from towers.cpu import keep_large_blocks, set_threads
from towers.crop import KEEP, Cropper, cropped
from towers.data import EvalWindow, TowerData, take
from towers.losses import bce_loss, softmax_loss, triplet_loss
from towers.model import TwoTower, logits, unknown_item_bias

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
        user_nums=encoder.user_width,
        item_nums=encoder.columns.item_nums,
        item_stats=[encoder.stats[name] for name, _ in encoder.columns.item_nums],
    )


@torch.no_grad()
def embed(tower: torch.nn.Module, batch: dict[str, torch.Tensor], size: int = 8192) -> torch.Tensor:
    """Vectors of every row of an encoded batch, in eval mode, in chunks."""
    tower.eval()
    n = len(next(iter(batch.values())))
    parts = [tower(take(batch, torch.arange(i, min(i + size, n)))) for i in range(0, n, size)]
    return torch.cat(parts) if parts else torch.empty(0, 0)


def tower_scores(
    model: TwoTower, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor],
    unknown_bias: float | None | str = "model", levelled: bool = True,
) -> Callable[[np.ndarray], np.ndarray]:  # fmt: skip
    """``score_fn(rows) -> (B, N)``: the model's scores of encoded users (rows: positions in
    ``users``) against encoded items; both towers run once, in eval mode. The items the model
    never saw score, for the mean of these users, as the ``unknown_bias`` quantile of the
    known items does (`towers.model.unknown_item_bias`; "model": its config's
    ``unknown_item_bias``); with ``levelled`` False, take that quantile of the known items'
    bias (the rule before the levelling, for benchmarks/ablation_new_items.py)."""
    u, v = embed(model.user_tower, users), embed(model.item_tower, items)  # (U, d), (N, d[+1])
    quantile = model.cfg.unknown_item_bias if unknown_bias == "model" else unknown_bias
    v = level_unknown_items(v, items["item"], u, None if quantile is None else float(quantile),
                            model.cfg, levelled)  # fmt: skip
    return lambda rows: logits(u[torch.from_numpy(rows)], v, model.cfg).numpy()  # (B, N)


def level_unknown_items(
    v: torch.Tensor, item: torch.Tensor, u: torch.Tensor, quantile: float | None,
    cfg: TowerConfig, levelled: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Item tower outputs ``v`` (N, d [+ 1]) of the encoded item ids ``item`` (N,) with the
    items the model never saw (OOV) at the ``quantile`` level (`towers.model.
    unknown_item_bias`), levelled on the mean of the user vectors ``u`` (U, d) scored against
    them (unless ``levelled`` is False); ``v`` as it is for a None ``quantile``."""
    if quantile is None:
        return v
    query = u.mean(0) / cfg.temperature if len(u) and levelled else None
    return unknown_item_bias(v, item == OOV, float(quantile), cfg, query)


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
    rows: slice | torch.Tensor,
    cfg: TowerConfig,
    gen: torch.Generator,
    sample: Sampler,
    crop: Cropper | None = None,
) -> torch.Tensor:
    users = model.user_tower(cropped(crop, take(data.train_users, rows)))  # (B, d)
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
        log_q = data.log_q[item_batch["item"]] + math.log(len(items))
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


class Training:
    """One training run, advanced an epoch at a time: ``train`` runs it to its end, and
    ``towers.tuning.tune`` advances several candidates a few epochs each and continues only
    the best (successive halving). A run owns its generators (data order, negatives, and
    torch's global generator for dropout, saved and restored around each epoch), so a run
    interleaved with others gives exactly the weights and history it would alone.

    By default the epoch is chosen on ``data.val`` (early stopping on recall@``select_k``;
    the best epoch's weights are kept). With ``epochs``, exactly that many epochs run and the
    last weights are kept: the refit, which has no validation window (``data.val`` is None)
    and reuses the epochs chosen before.
    """

    def __init__(
        self, cfg: TowerConfig, data: TowerData, progress: bool = True, epochs: int | None = None
    ) -> None:
        if data.val is None and epochs is None:
            raise ValueError("without a validation window, give the number of epochs to train")
        set_threads(cfg)
        keep_large_blocks()
        self.cfg, self.data, self.progress, self.fixed = cfg, data, progress, epochs
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.model = build_model(cfg, data.encoder)
        self.sampler = negative_sampler(data, cfg)
        self.crop = Cropper.of(cfg, data.encoder, data.catalogue)
        self.optimizer = _optimizer(self.model, cfg)
        self.rng = torch.get_rng_state()  # the global generator, as this run left it
        self.history: list[dict[str, Any]] = []
        self.best, self.best_epoch, self.stale = -1.0, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.done = False
        self.seconds = 0.0

    def score(self) -> float:
        """Validation recall@``select_k`` of the last epoch."""
        return float(self.history[-1]["val"][f"recall@{self.cfg.select_k}"])

    def epoch(self) -> dict[str, Any]:
        """Run one more epoch; returns its history entry and sets ``done`` at the end."""
        if self.done:
            raise RuntimeError("this training run has ended")
        cfg, data = self.cfg, self.data
        started, outside = time.perf_counter(), torch.get_rng_state()
        torch.set_rng_state(self.rng)
        epoch = len(self.history) + 1
        self.model.train()
        loss = self.train_epoch(epoch)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outside)
        entry: dict[str, Any] = {"epoch": epoch, "loss": loss}
        if data.val is not None:
            entry["val"] = self.validate()
        self.seconds += time.perf_counter() - started
        entry["seconds"] = round(self.seconds, 2)
        self.history.append(entry)
        last = self.fixed or cfg.epochs
        if self.fixed is not None:  # fixed length: keep the last weights
            self.best_epoch, self.done = epoch, epoch >= last
            log.info("epoch %d loss %.4f", epoch, loss)
            return entry
        score = self.score()
        log.info("epoch %d loss %.4f val recall@%d %.4f", epoch, loss, cfg.select_k, score)
        if score > self.best:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.stale += 1
        self.done = epoch >= last or self.stale >= cfg.patience
        return entry

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training rows in a fresh order; the mean loss per row."""
        cfg, data, model = self.cfg, self.data, self.model
        n = len(data.train_items["item"])
        order = torch.randperm(n, generator=self.gen)
        # The training rows gathered into this epoch's order once: each batch is then a slice
        # (a view) instead of a dozen small gathers per step.
        ages = data.train_age_days
        shuffled = replace(data, train_users=take(self.epoch_users(n), order),
                           train_items=take(data.train_items, order),
                           train_age_days=None if ages is None else ages[order])  # fmt: skip
        batches = [slice(i, min(i + cfg.batch_size, n)) for i in range(0, n, cfg.batch_size)]
        total = 0.0
        # disable=None: no bar when stderr is not a terminal (logs, CI), a bar otherwise.
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=None if self.progress else True,
                   leave=False)  # fmt: skip
        for rows in bar:
            loss = _loss(model, shuffled, rows, cfg, self.gen, self.sampler, self.crop)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item() * (rows.stop - rows.start)
        return total / n

    def epoch_users(self, rows: int) -> dict[str, torch.Tensor]:
        """The training rows' user inputs for one epoch: with the crop on, plus its draw for
        every row (``towers.crop.KEEP``, cut per batch by ``_loss``); drawn after the epoch's
        order, so one process and the ranks of a distributed run cut the same rows."""
        if self.crop is None:
            return self.data.train_users
        return {**self.data.train_users, KEEP: self.crop.draw(rows, self.gen)}

    def validate(self) -> dict[str, Any]:
        """Validation metrics of the current weights (all users)."""
        assert self.data.val is not None
        return evaluate_window(self.model, self.data.val)["all"]

    def state(self) -> dict[str, Any]:
        """Everything the run's next epochs depend on, and its record so far: with
        :meth:`load_state`, a run advanced in another process goes on here as it would have
        there (``towers.parallel``)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "gen": self.gen.get_state(), "rng": self.rng, "history": self.history,
                "best": self.best, "best_epoch": self.best_epoch, "stale": self.stale,
                "best_state": self.best_state, "done": self.done, "seconds": self.seconds}  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Take over the run that :meth:`state` described (the same config and data)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["gen"])
        self.rng = state["rng"]
        self.history = list(state["history"])
        self.best, self.best_epoch, self.stale = state["best"], state["best_epoch"], state["stale"]
        self.best_state, self.done = state["best_state"], state["done"]
        self.seconds = state["seconds"]

    def result(self, copy: bool = False) -> TrainResult:
        """The run as it stands: the best epoch's weights (the last ones for a fixed length),
        in the run's own model, or with ``copy`` in a copy of it, so that the run can go on
        from its last weights."""
        model = deepcopy(self.model) if copy else self.model
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model.eval()
        history = list(self.history)
        return TrainResult(
            model=model,
            encoder=self.data.encoder,
            config=self.cfg,
            best_epoch=self.best_epoch,
            val_metrics=history[self.best_epoch - 1].get("val", {}) if history else {},
            history=history,
            seconds=round(self.seconds, 2),
        )


def train(
    cfg: TowerConfig, data: TowerData, progress: bool = True, epochs: int | None = None
) -> TrainResult:
    """Fit a two-tower model on ``data.train_*`` (see :class:`Training`): early stopping on
    ``data.val``, or exactly ``epochs`` epochs."""
    run = Training(cfg, data, progress, epochs)
    while not run.done:
        run.epoch()
    return run.result()
