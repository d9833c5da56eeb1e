"""The training losses of the two towers.

Losses (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019; Yang et al., "Mixed Negative Sampling for Learning Two-tower
Neural Networks in Recommendations", WWW 2020):
- softmax: in-batch sampled softmax; with `logq` the log of each candidate's sampling
  probability is subtracted from its logit; with mixed negatives, uniformly drawn catalogue
  items join the candidate pool;
- bce: binary cross-entropy of each positive against the uniform negatives;
- triplet: margin loss between the positive and the hardest uniform negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from towers.config import TowerConfig
from towers.model import logits, paired_logits


def softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    item_ids: torch.Tensor,
    log_q: torch.Tensor | None,
    cfg: TowerConfig,
    extra: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """In-batch sampled softmax: row i's positive is item ``offset + i``; the other items of
    the batch (and the `extra` uniform negatives) are its negatives. ``weights`` (B,): a
    weighted mean over the rows instead of the plain mean. ``offset``: where the rows' own
    items start among the candidates (a rank's rows in the global batch, ``towers.ddp``).

    users: (B, d); items: (G, d), the batch's items (G = B unless the batch is a shard of a
    global one); item_ids: (G,) catalogue indices, so that another row with the same item is
    not counted as a negative; log_q: (G,) log sampling probability of each in-batch item,
    subtracted from its logit when logQ correction is on.
    """
    candidates, ids, lq = items, item_ids, log_q
    if extra is not None:
        assert extra_ids is not None, "extra negatives need their item ids"
        candidates = torch.cat([items, extra])  # (B + M, d)
        ids = torch.cat([item_ids, extra_ids])
        has_q = log_q is not None and extra_log_q is not None
        lq = torch.cat([log_q, extra_log_q]) if has_q else None  # type: ignore[list-item]
    # The same scores as `logits(...) - lq`, in one pass over the (B, B + M) matrix: the
    # per-candidate shift (bias - log q) is folded into the matrix product, which on CPU saves
    # three elementwise passes forward and backward over the largest tensor of the step.
    d = cfg.dim
    shift = candidates[:, d] if candidates.shape[1] > d else candidates.new_zeros(len(ids))
    if cfg.logq and lq is not None:
        shift = shift - lq
    scores = torch.addmm(
        shift.unsqueeze(0), users, candidates[:, :d].T, alpha=1.0 / cfg.temperature
    )  # (B, B + M)
    own = item_ids[offset : offset + len(users)]  # (B,) the rows' positives
    hit_rows, hit_cols = accidental_hits(own, ids, offset)
    scores[hit_rows, hit_cols] = float("-inf")  # in place: addmm keeps its inputs, not this
    rows = torch.arange(offset, offset + len(users), device=users.device)
    if weights is None:
        return F.cross_entropy(scores, rows)
    return _weighted_mean(F.cross_entropy(scores, rows, reduction="none"), weights)


def accidental_hits(
    item_ids: torch.Tensor, ids: torch.Tensor, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the candidates ``ids`` (C,) holding row i's item ``item_ids[i]``
    (B,), other than column ``offset + i`` (the rows' own items start there among the
    candidates). Found in the sorted candidates: a few pairs, instead of comparing all
    B x C of them."""
    ordered, order = torch.sort(ids, stable=True)  # (C,), (C,)
    first = torch.searchsorted(ordered, item_ids)  # (B,) each row's run of equal candidates
    counts = torch.searchsorted(ordered, item_ids, right=True) - first  # (B,) >= 1
    rows = torch.repeat_interleave(torch.arange(len(item_ids), device=ids.device), counts)
    starts = torch.repeat_interleave(first - (torch.cumsum(counts, 0) - counts), counts)
    cols = order[starts + torch.arange(len(rows), device=ids.device)]  # (P,)
    keep = cols != rows + offset
    return rows[keep], cols[keep]


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-row losses (B,), weighted by ``weights`` (B,) when given."""
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()


def bce_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
    cfg: TowerConfig,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each positive (user_i, item_i) against every sampled negative, as binary labels."""
    pos = paired_logits(users, items, cfg)  # (B,)
    neg = logits(users, negatives, cfg)  # (B, M)
    losses = F.binary_cross_entropy_with_logits(
        torch.cat([pos.unsqueeze(1), neg], 1),
        torch.cat([torch.ones_like(pos).unsqueeze(1), torch.zeros_like(neg)], 1),
        reduction="none",
    )  # (B, 1 + M)
    return _weighted_mean(losses.mean(dim=1), weights)


def triplet_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
    cfg: TowerConfig,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Margin between the positive's score and the hardest sampled negative's; the margin is
    in cosine units, so in scores it is margin / temperature."""
    pos = paired_logits(users, items, cfg)  # (B,)
    hardest = logits(users, negatives, cfg).max(dim=1).values  # (B,)
    return _weighted_mean(F.relu(cfg.margin / cfg.temperature - pos + hardest), weights)
