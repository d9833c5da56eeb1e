"""The crop (``TowerConfig.history_crop``, ``towers.crop``): a training row cut back to its k
newest items gives the user tower exactly what a cold-start request with those k events
gives it (``recsys.features.online.cold_start_row`` through the row encoder, sent at the
row's time), for every k; rows not drawn are left as they are; the draw follows the run's
generator; a user numeric the crop cannot recompute is refused by name. Under DDP the ranks
cut the rows one process would (tests/towers/test_ddp.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.features.encoding import OOV, FeatureEncoder
from recsys.features.online import Interaction, ItemGenres, cold_start_row
from recsys.features.row_encoding import RowEncoder
from tests.towers.test_model import GENRES, rows
from towers.config import TowerConfig
from towers.crop import KEEP, Cropper
from towers.data import item_tensors, user_tensors

# Each item's genres (item 99, in a history, is unknown to the encoder and the catalogue).
ITEM_GENRES = {10: ["Drama"], 11: ["Comedy", "Drama"], 12: [], 13: ["Action"], 14: ["Drama"]}


def training_rows(copies: int = 1) -> pd.DataFrame:
    """The model tests' rows, with every catalogue item among the training rows' items (an
    item no training row has is unknown to the encoder: counted in a cut row's genre shares'
    denominator and in no genre, as the feature counts an item it cannot join)."""
    frame = rows().assign(item_id=[10, 11, 12, 13, 14, 10])
    return pd.concat([frame] * copies, ignore_index=True)


def catalogue(encoder: FeatureEncoder) -> dict[str, torch.Tensor]:
    frame = rows(5).assign(item_id=list(ITEM_GENRES), item_genres=list(ITEM_GENRES.values()))
    return item_tensors(encoder, frame)


def request(row: pd.Series, k: int, encoder: FeatureEncoder) -> dict[str, np.ndarray]:
    """The user tower's inputs of a cold-start request with the row's k newest events, sent
    at the row's time."""
    ids = list(row.recent_item_ids or [])[:k]
    ratings = list(row.recent_item_ratings or [])[:k]
    times = list(row.recent_item_timestamps or [])[:k]
    recent = [Interaction(int(i), None if np.isnan(r) else float(r),
                          pd.Timestamp(t, unit="s", tz="UTC").to_pydatetime())
              for i, r, t in zip(ids, ratings, times, strict=True)]  # fmt: skip
    flags = np.array([[g in ITEM_GENRES[i] for g in GENRES] for i in ITEM_GENRES], np.uint8)
    genres = ItemGenres(np.array(list(ITEM_GENRES)), flags, tuple(GENRES))
    now = row.event_timestamp.to_pydatetime()
    feats = cold_start_row(age=None, gender=None, occupation=None, zip_code=None,
                           recent=recent, item_genres=genres, recent_items=4, now=now)  # fmt: skip
    return RowEncoder(encoder).arrays(None, feats, now.timestamp())


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_cut_row_is_what_a_cold_start_request_with_its_k_newest_events_gives(k):
    frame = training_rows()
    encoder = FeatureEncoder.fit(frame, GENRES, history=4)
    crop = Cropper.of(TowerConfig(history_crop=1.0), encoder, catalogue(encoder))
    assert crop is not None
    batch = user_tensors(encoder, frame)
    keep = torch.tensor([k, k, k, k, k, -1])  # the last row not cut
    out = crop.cut({**batch, KEEP: keep})
    assert KEEP not in out
    for r in range(len(frame) - 1):
        want = request(frame.iloc[r], k, encoder)
        for name in ("nums", "affinity", "history", "history_feats"):
            torch.testing.assert_close(out[name][r], torch.from_numpy(want[name][0]),
                                       msg=f"row {r}, {name}")  # fmt: skip
        assert int(out["user"][r]) == OOV  # no id: a request's unknown-user slot
    # The row not picked keeps everything, its id included.
    for name, value in batch.items():
        torch.testing.assert_close(out[name][-1], value[-1])
    assert int(out["user"][-1]) != OOV


def test_the_share_cut_and_the_draw_follow_the_generator():
    frame = training_rows(200)
    encoder = FeatureEncoder.fit(frame, GENRES, history=4)
    crop = Cropper.of(TowerConfig(history_crop=0.3, history_crop_max=1), encoder,
                      catalogue(encoder))  # fmt: skip
    assert crop is not None
    keep = crop.draw(len(frame), torch.Generator().manual_seed(0))
    torch.testing.assert_close(keep, crop.draw(len(frame), torch.Generator().manual_seed(0)))
    assert set(keep.tolist()) == {-1, 0, 1}
    assert abs((keep >= 0).float().mean().item() - 0.3) < 0.05  # 1,200 rows: sd 0.013
    out = crop.cut({**user_tensors(encoder, frame), KEEP: keep})
    assert torch.equal(out["user"] == OOV, keep >= 0)
    assert Cropper.of(TowerConfig(), encoder, catalogue(encoder)) is None  # off by default


def test_a_user_numeric_the_crop_cannot_recompute_is_named():
    from tests.features.test_encoding import extended

    catalog = extended()
    # user_rating_count is a Count: recomputed. A numeric of another kind is refused.
    frame = training_rows().assign(user_region="north", user_rating_count=1)
    encoder = FeatureEncoder.fit(frame, GENRES, history=4, catalog=catalog)
    assert Cropper.of(TowerConfig(history_crop=0.5), encoder, catalogue(encoder)) is not None
    from recsys.features.ops import Column
    from recsys.features.spec import Encoding, Feature

    views = tuple(
        replace(v, features=(*v.features, Feature("user_height", "float64", Column("height"),
                                                  Encoding.NUMERIC)))
        if v.name == "user_activity" else v
        for v in catalog.views
    )  # fmt: skip
    odd = replace(catalog, views=views)
    encoder = FeatureEncoder.fit(frame.assign(user_height=1.8), GENRES, history=4, catalog=odd)
    with pytest.raises(ValueError, match="user_height"):
        Cropper.of(TowerConfig(history_crop=0.5), encoder, catalogue(encoder))
