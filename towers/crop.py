"""Training rows cut back to what a new user's request gives the user tower
(``TowerConfig.history_crop``): the history cut to its newest few items, the activity
numerics recomputed from them, no user id.

A cold-start ``POST`` (``recsys.features.online.cold_start_row``) carries a profile and the
user's first events; its activity features are computed from those events alone, and none
when there are none. Training rows see that path only in users' own first events. The crop
gives the tower many more of them, drawn from every user's history, with the features a
request would carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys.features.encoding import OOV, PAD, FeatureEncoder
from recsys.features.ops import Count, GenreShares, MeanRating
from towers.config import TowerConfig

# The columns of the history features (recsys.features.encoding.history_features).
RATING, UNRATED = 0, 1
# The column of an epoch's user rows that carries the crop's draw (Cropper.draw).
KEEP = "crop_keep"


@dataclass
class Numeric:
    """One user numeric the crop recomputes: its value and missing-flag columns in ``nums``,
    its standardisation, and what it is."""

    column: int
    flag: int
    mean: float
    std: float
    log: bool
    kind: str  # "count", "rated count" or "mean rating"


@dataclass
class Cropper:
    share: float  # of the training rows, drawn every epoch
    most: int  # items kept at most
    genres: torch.Tensor  # (n_items, G) the genre bag of each encoded item (zeros: OOV, PAD)
    numerics: list[Numeric]
    rating: tuple[float, float]  # the history ratings' standardisation

    @classmethod
    def of(cls, cfg: TowerConfig, encoder: FeatureEncoder,
           items: dict[str, torch.Tensor]) -> Cropper | None:  # fmt: skip
        """For ``cfg.history_crop`` > 0; ``items``: encoded item rows (any, with repeats)
        whose genres give each item's. A user numeric the crop cannot recompute from the
        kept items is an error naming it."""
        if cfg.history_crop <= 0:
            return None
        if not 0 < cfg.history_crop <= 1 or cfg.history_crop_max < 0:
            raise ValueError(f"history_crop must be in (0, 1] and history_crop_max >= 0, got "
                             f"{cfg.history_crop}, {cfg.history_crop_max}")  # fmt: skip
        specs = encoder.columns.user_nums
        numerics = []
        for j, (name, log) in enumerate(specs):
            op = encoder.catalog.feature(name).op
            if isinstance(op, Count):
                kind = "rated count" if op.rated else "count"
            elif isinstance(op, MeanRating):
                kind = "mean rating"
            else:
                raise ValueError(f"history_crop: the user feature {name!r} ({type(op).__name__}) "
                                 "cannot be recomputed from the kept items")  # fmt: skip
            mean, std = encoder.stats[name]
            numerics.append(Numeric(j, len(specs) + j, mean, std, log, kind))
        affinity = encoder.catalog.feature(encoder.columns.affinity).op
        if not isinstance(affinity, GenreShares):
            raise ValueError(f"history_crop: the affinity {encoder.columns.affinity!r} is not "
                             "genre shares")  # fmt: skip
        genres = torch.zeros(encoder.n_items, len(encoder.genres))
        genres[items["item"]] = items["genres"]
        genres[[OOV, PAD]] = 0.0
        return cls(cfg.history_crop, cfg.history_crop_max, genres, numerics,
                   encoder.stats["history_rating"])  # fmt: skip

    def draw(self, rows: int, gen: torch.Generator) -> torch.Tensor:
        """(rows,) for each training row of an epoch, how many items it keeps when cut
        (uniform in 0..``most``), or -1 for a row not cut (a share 1 - ``share``)."""
        pick = torch.rand(rows, generator=gen) < self.share
        k = torch.randint(0, self.most + 1, (rows,), generator=gen)
        return torch.where(pick, k, -1)

    def cut(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch, its ``KEEP`` column (from :meth:`draw`) taken out, with each row whose
        value is k >= 0 cut back to its k newest items (all of them if fewer), as a
        cold-start request with those events would be."""
        batch = dict(batch)
        k = batch.pop(KEEP)
        pick = k >= 0
        history, feats = batch["history"], batch["history_feats"]  # (B, L), (B, L, F)
        position = torch.arange(history.shape[1])
        kept = (history != PAD) & ((position < k[:, None]) | ~pick[:, None])  # (B, L)
        n = kept.sum(1).float()  # (B,)
        rated = kept & (feats[..., UNRATED] == 0)
        n_rated = rated.sum(1).float()
        r_mean, r_std = self.rating
        stars = ((feats[..., RATING] * r_std + r_mean) * rated).sum(1)  # (B,)
        nums = batch["nums"].clone()
        for num in self.numerics:
            if num.kind == "mean rating":
                value, has = stars / n_rated.clamp(min=1), n_rated > 0
            else:
                value = n_rated if num.kind == "rated count" else n
                has = n > 0  # a user without events has no activity features at all
            value = torch.log1p(value) if num.log else value
            value = torch.where(has, (value - num.mean) / num.std, 0.0)
            nums[:, num.column] = torch.where(pick, value, nums[:, num.column])
            nums[:, num.flag] = torch.where(pick, (~has).float(), nums[:, num.flag])
        kept_history = torch.where(kept, history, PAD)
        shares = (self.genres[kept_history] * kept[..., None]).sum(1) / n.clamp(min=1)[:, None]
        return {
            **batch,
            "user": torch.where(pick, OOV, batch["user"]),
            "nums": nums,
            "affinity": torch.where(pick[:, None], shares, batch["affinity"]),
            "history": kept_history,
            "history_feats": feats * kept[..., None],
        }


def cropped(crop: Cropper | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training batch as the user tower takes it: cut as its ``KEEP`` column says
    (:meth:`Cropper.cut`), or as it is when the epoch drew no crop."""
    return batch if crop is None or KEEP not in batch else crop.cut(batch)
