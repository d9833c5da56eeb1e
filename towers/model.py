"""The two towers and their scores (the losses are in ``towers.losses``).

UserTower: user-id embedding (slot 0 = unknown user, also used for id-dropout so a
features-only embedding is learned), profile category embeddings, normalised activity
numerics, genre affinity, and a summary of the user's recent items (`HistoryBlock`: their
embeddings from the item tower's id table, mean-pooled, or with their order, rating and
time through a GRU or a self-attention layer) → MLP → L2-normalised vector (B, d).
ItemTower: item-id embedding (slot 0 = unknown item), genre bag, release year and
popularity numerics → MLP → L2-normalised vector (B, d), followed (with ``item_bias``) by
one more column, the item's scalar bias: (B, d + 1). Outside training, with
``popularity_prior`` set, that column also carries the prior: the weight times
log1p(the item's count in ``popularity_feature``).
Score: dot product of the normalised vectors / temperature (+ the item's bias), `logits`.
For a vector index the same score is one dot product: `index_vectors` (items) against
`query_vectors` (users).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from recsys.features.encoding import HISTORY_FEATURES, PAD
from towers.config import TowerConfig


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``, with its mask drawn by ``torch.rand``: on CPU
    ``nn.Dropout``'s Bernoulli draw made it 3.1 ms on a (1024, 256) batch against 1.2 ms
    (one thread), a tenth of a training step (benchmarks/bench_training.py)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p  # (..., d) bool
        return x * keep * (1.0 / (1.0 - self.p))


def _mlp(inputs: int, cfg: TowerConfig, outputs: int | None = None) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, cfg.hidden),
        nn.GELU(),
        Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, outputs or cfg.dim),
    )


def logits(users: torch.Tensor, items: torch.Tensor, cfg: TowerConfig) -> torch.Tensor:
    """Scores (U, I) of user vectors (U, d) against item tower outputs (I, d[+1])."""
    scores = users @ items[:, : cfg.dim].T / cfg.temperature
    if items.shape[1] > cfg.dim:  # the item bias column
        scores = scores + items[:, cfg.dim]
    return scores


def paired_logits(users: torch.Tensor, items: torch.Tensor, cfg: TowerConfig) -> torch.Tensor:
    """Score (B,) of each user row with the item row of the same index."""
    scores = (users * items[:, : cfg.dim]).sum(-1) / cfg.temperature
    return scores + items[:, cfg.dim] if items.shape[1] > cfg.dim else scores


def index_vectors(items: torch.Tensor, cfg: TowerConfig) -> torch.Tensor:
    """Item tower outputs as the vectors of a dot-product index: [v / T, bias] (I, d + 1)."""
    bias = items[:, cfg.dim :] if items.shape[1] > cfg.dim else items.new_zeros(len(items), 1)
    return torch.cat([items[:, : cfg.dim] / cfg.temperature, bias], dim=1)


def unknown_item_bias(
    items: torch.Tensor, unknown: torch.Tensor, quantile: float, cfg: TowerConfig,
    query: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Item tower outputs or index vectors (I, d + 1) with the bias column of the ``unknown``
    items (I,) bool (ids the model never saw: new items) set to one common value, chosen so
    that for the average user the median unknown item scores as the known items'
    ``quantile`` does. ``query`` (d,) is that user: the mean user vector, scaled so that
    ``items[:, :d] @ query + bias`` is an item's score (the mean of ``query_vectors``' first
    d columns for index vectors; that mean / temperature for tower outputs). Without it, the
    common bias is the ``quantile`` of the known items' bias.

    A new item has no events, so its learned bias and popularity prior put it below every
    item with some: it would reach no one. The known items' median bias is not enough either:
    the known items' vectors share a direction that every user's vector also leans on (the
    in-batch loss leaves it free), and the unknown-id slot's content-only vectors lie off it,
    so at that bias a catalogue refresh's three new items reached none of 492 users' top 100
    of 203 (tests/orchestration/test_catalogue_refresh.py). One bias for all of them keeps
    their order among themselves, which is what their content says (levelling each new item
    on its own lost a fifth of their validation recall among themselves)."""
    if items.shape[1] <= cfg.dim or not bool(unknown.any()) or bool(unknown.all()):
        return items
    out, d = items.clone(), cfg.dim
    if query is None:
        out[unknown, d] = torch.quantile(items[~unknown, d], quantile)
        return out
    shared = items[:, :d] @ query.to(items.dtype)  # (I,) the average user's score, bias aside
    level = torch.quantile(shared[~unknown] + items[~unknown, d], quantile)
    out[unknown, d] = level - torch.quantile(shared[unknown], 0.5)
    return out


def query_vectors(users: torch.Tensor) -> torch.Tensor:
    """User tower outputs as queries of that index: [u, 1] (U, d + 1)."""
    return torch.cat([users, users.new_ones(len(users), 1)], dim=1)


def _embedding(n: int, dim: int, cfg: TowerConfig, padding_idx: int | None = None) -> nn.Embedding:
    emb = nn.Embedding(n, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=cfg.init_std)
    if padding_idx is not None:
        with torch.no_grad():
            emb.weight[padding_idx].zero_()
    return emb


def _drop_ids(ids: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Replace ids by the unknown slot (0) with probability p while training."""
    if not training or p <= 0:
        return ids
    return ids.masked_fill(torch.rand(ids.shape, device=ids.device) < p, 0)


class ItemTower(nn.Module):
    num_stats: torch.Tensor  # (2, len(nums)): each numeric input's mean and std

    def __init__(
        self, cfg: TowerConfig, n_items: int, n_genres: int,
        nums: tuple[tuple[str, bool], ...], num_stats: list[tuple[float, float]],
    ) -> None:  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.item = _embedding(n_items, cfg.id_dim, cfg, padding_idx=PAD)
        self.genres = nn.Linear(n_genres, cfg.cat_dim, bias=False)  # a bag of genre vectors
        outputs = cfg.dim + (1 if cfg.item_bias else 0)
        self.nums = nums  # the encoder's (column, log1p?) of each numeric input, in order
        self.mlp = _mlp(cfg.id_dim + cfg.cat_dim + 2 * len(nums), cfg, outputs)  # value, flag
        # The encoder's (mean, std) of each numeric input (in the checkpoint's encoder, so
        # not saved twice): what turns a standardised count back into the log count the
        # popularity prior adds.
        self.register_buffer("num_stats", torch.tensor(num_stats).T.float(), persistent=False)

    def log_count(self, nums: torch.Tensor, feature: str) -> torch.Tensor:
        """(B,) log1p of each item's count ``feature`` (a log-scaled numeric input) from the
        encoded numerics (B, 2 * len(self.nums)); 0 where the count is missing."""
        logs = [name for name, log in self.nums if log]
        if feature not in logs:
            raise ValueError(f"popularity_feature {feature!r}: expected one of {logs}")
        j = [name for name, _ in self.nums].index(feature)
        known = 1.0 - nums[:, len(self.nums) + j]  # the missing flag's complement
        return (nums[:, j] * self.num_stats[1, j] + self.num_stats[0, j]) * known

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = _drop_ids(batch["item"], self.cfg.item_id_dropout, self.training)
        x = torch.cat(
            [self.item(ids), self.genres(batch["genres"]), batch["nums"]], dim=-1
        )  # (B, id_dim + cat_dim + nums)
        out = self.mlp(x)  # (B, d [+ 1])
        d, weight = self.cfg.dim, self.cfg.popularity_prior
        bias = out[:, d:]  # (B, 1) or (B, 0)
        if weight and not self.training:  # the prior is chosen after training, not learned
            prior = weight * self.log_count(batch["nums"], self.cfg.popularity_feature)
            bias = (prior + bias.sum(dim=1)).unsqueeze(1)  # (B, 1)
        return torch.cat([F.normalize(out[:, :d], dim=-1), bias], dim=-1)  # (B, d [+ 1])


class HistoryBlock(nn.Module):
    """The user's recent items (B, L), newest first, PAD-padded at the end, with their
    per-position features (B, L, HISTORY_FEATURES) → one vector (B, id_dim for "mean", else
    history_dim); zeros for a user with no history.

    Sequence encoders (a GRU as in GRU4Rec, Hidasi et al., ICLR 2016; self-attention as in
    SASRec, Kang and McAuley, ICDM 2018) see a projection of [item embedding, rating and time
    features] plus a position embedding. "gru" reads the items oldest to newest (the padding,
    zeroed, first) and keeps the final state; "attention" runs one pre-norm self-attention
    layer with the padding masked and keeps the newest position's output.
    """

    keep: torch.Tensor  # (HISTORY_FEATURES,) 1 for the feature columns in use

    def __init__(self, cfg: TowerConfig, item_embedding: nn.Embedding) -> None:
        super().__init__()
        self.kind = cfg.history_encoder
        self.item = item_embedding
        if self.kind == "mean":
            return
        dim = cfg.history_dim
        # One projection of [item embedding, features] per position to the block's width:
        # the block runs on B x L positions, so its width sets most of the step's cost.
        self.inputs = nn.Linear(cfg.id_dim + HISTORY_FEATURES, dim)
        self.position = _embedding(cfg.history, dim, cfg)
        # Which feature columns are used (rating z + missing flag, time z + missing flag).
        keep = [cfg.history_ratings] * 2 + [cfg.history_times] * 2
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.float32), persistent=False)
        self.block: nn.Module
        if self.kind == "gru":
            self.block = nn.GRU(dim, dim, batch_first=True)
        elif self.kind == "attention":
            self.block = nn.TransformerEncoderLayer(
                dim, cfg.attention_heads, dim_feedforward=2 * dim, dropout=cfg.history_dropout,
                batch_first=True, norm_first=True,
            )  # fmt: skip
        else:
            raise ValueError(f"history_encoder {self.kind!r}: expected mean, gru or attention")

    def forward(self, history: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            # Padding excluded (no history pools to zeros). One bag kernel: no (B, L, id_dim)
            # intermediate to build, mask and differentiate through.
            return F.embedding_bag(history, self.item.weight, mode="mean", padding_idx=PAD)
        present = history != PAD  # (B, L)
        x = self.inputs(torch.cat([self.item(history), feats * self.keep], dim=-1))  # (B, L, h)
        x = (x + self.position.weight[: history.shape[1]]) * present.unsqueeze(-1)
        has = present.any(dim=1, keepdim=True)  # (B, 1)
        if self.kind == "gru":
            out, _ = self.block(x.flip(1))  # (B, L, h), oldest first
            pooled = out[:, -1]  # (B, h): the state after the newest item
        else:
            # A row with every key masked would give NaN: its newest slot stays visible (its
            # output is zeroed below).
            ignore = torch.cat([~present[:, :1] & has, ~present[:, 1:]], dim=1)  # (B, L)
            pooled = newest_output(cast(nn.TransformerEncoderLayer, self.block), x, ignore)
        return pooled * has


def newest_output(
    layer: nn.TransformerEncoderLayer, x: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """``layer(x, src_key_padding_mask=ignore)[:, 0]`` for a pre-norm layer, computed for the
    newest position alone: its query against every position's key and value, then the
    feed-forward block on that one position. The layer computed every position's output
    (queries, feed-forward) to keep one: L times the work where only the keys and values
    need every position. Same weights, same result (tests/towers/test_model.py)."""
    attn, training = layer.self_attn, layer.training
    heads, (b, length, h) = attn.num_heads, x.shape
    y = layer.norm1(x)  # (B, L, h)
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    assert bias is not None
    q = F.linear(y[:, 0], w[:h], bias[:h])  # (B, h)
    kv = F.linear(y, w[h:], bias[h:])  # (B, L, 2h)
    k, v = kv.view(b, length, 2, heads, h // heads).unbind(2)  # (B, L, H, h/H) each
    scores = torch.einsum("bnd,blnd->bnl", q.view(b, heads, h // heads), k)
    scores = (scores / math.sqrt(h // heads)).masked_fill(ignore.unsqueeze(1), float("-inf"))
    weights = F.dropout(scores.softmax(-1), attn.dropout, training)  # (B, H, L)
    out = torch.einsum("bnl,blnd->bnd", weights, v).reshape(b, h)  # (B, h)
    z = x[:, 0] + layer.dropout1(attn.out_proj(out))  # (B, h)
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(z)))))
    return z + layer.dropout2(ff)


class UserTower(nn.Module):
    def __init__(
        self,
        cfg: TowerConfig,
        n_users: int,
        cat_sizes: list[int],
        n_genres: int,
        n_nums: int,
        item_embedding: nn.Embedding,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.user = _embedding(n_users, cfg.id_dim, cfg)
        self.cats = nn.ModuleList(_embedding(n, cfg.cat_dim, cfg) for n in cat_sizes)
        self.history = HistoryBlock(cfg, item_embedding)  # in the item-id space, shared
        pooled = cfg.id_dim if cfg.history_encoder == "mean" else cfg.history_dim
        inputs = cfg.id_dim + pooled + cfg.cat_dim * len(cat_sizes) + n_genres + n_nums
        self.mlp = _mlp(inputs, cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = _drop_ids(batch["user"], self.cfg.user_id_dropout, self.training)
        pooled = self.history(batch["history"], batch["history_feats"])  # (B, id_dim | h)
        cats = [emb(batch["cats"][:, k]) for k, emb in enumerate(self.cats)]
        x = torch.cat(
            [self.user(ids), pooled, *cats, batch["affinity"], batch["nums"]], dim=-1
        )  # (B, inputs)
        return F.normalize(self.mlp(x), dim=-1)  # (B, d)


class TwoTower(nn.Module):
    def __init__(
        self,
        cfg: TowerConfig,
        n_users: int,
        n_items: int,
        cat_sizes: list[int],
        n_genres: int,
        user_nums: int,
        item_nums: tuple[tuple[str, bool], ...],
        item_stats: list[tuple[float, float]],
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_tower = ItemTower(cfg, n_items, n_genres, item_nums, item_stats)
        self.user_tower = UserTower(
            cfg, n_users, cat_sizes, n_genres, user_nums, self.item_tower.item
        )

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return logits(users, items, self.cfg)  # (U, I)

    def set_config(self, cfg: TowerConfig) -> None:
        """Give the model and both towers ``cfg``: a scoring-time setting chosen after
        training (the popularity prior) takes effect without rebuilding the weights."""
        self.cfg = self.item_tower.cfg = self.user_tower.cfg = cfg
