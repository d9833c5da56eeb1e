"""Tower shapes and normalisation, the logQ correction on a worked example, a cold user's
embedding from features alone, and a checkpoint round trip."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.features.encoding import PAD, FeatureEncoder
from towers.checkpoint import load_checkpoint, save_checkpoint
from towers.config import TowerConfig
from towers.data import item_tensors, user_tensors
from towers.losses import bce_loss, softmax_loss, triplet_loss
from towers.model import index_vectors, query_vectors
from towers.train import TrainResult, build_model

GENRES = ["Action", "Comedy", "Drama"]
T0 = 1_700_000_000  # epoch seconds of the first event


def rows(n: int = 6) -> pd.DataFrame:
    """Training-set-like rows: user and item features as the Feast join returns them."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "user_id": rng.integers(1, 4, n), "item_id": rng.integers(10, 15, n),
        "age_bucket": rng.choice(["18-24", "25-34"], n), "gender": rng.choice(["F", "M"], n),
        "occupation": rng.choice(["writer", "student"], n), "zip_prefix": ["100"] * n,
        "zip_region": ["1"] * n,
        "user_interaction_count": [None, 1, 2, 3, 4, 5][:n], "user_mean_rating": [None, 4.0, 3.5, 3, 2, 5][:n],
        "user_genre_affinity": [None] + [[0.5, 0.5, 0.0]] * (n - 1),
        "recent_item_ids": [None, [10], [11, 10], [12, 11, 10], [99, 12], [13]][:n],
        "recent_item_ratings": [None, [4.0], [3.0, 4.0], [1.0, 3.0, 4.0], [np.nan, 1.0], [5.0]][:n],
        "recent_item_timestamps": [None, [T0], [T0 + 60, T0], [T0 + 7200, T0 + 60, T0],
                                   [T0 + 9000, T0 + 7200], [T0 + 86400]][:n],
        "event_timestamp": pd.to_datetime(T0 + 86400 * np.arange(1, n + 1), unit="s", utc=True),
        "item_genres": [["Drama"], ["Comedy", "Drama"], [], ["Action"], ["Drama"], ["Horror"]][:n],
        "item_release_year": [1995, None, 2000, 1980, 1999, 2001][:n],
        "item_interaction_count": [None, 1, 5, 2, 9, 3][:n], "item_mean_rating": [None, 4.0, 3, 2, 5, 1][:n],
        "item_count_7d": [None, 0, 1, 2, 3, 0][:n], "item_count_30d": [None, 1, 2, 2, 3, 1][:n],
    })  # fmt: skip


@pytest.fixture
def encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(rows(), GENRES, history=4)


def test_encoding_and_tower_shapes(encoder):
    cfg = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4)
    model = build_model(cfg, encoder).eval()
    users, items = user_tensors(encoder, rows()), item_tensors(encoder, rows())
    assert users["history"].shape == (6, 4) and users["affinity"].shape == (6, 3)
    # Histories: newest first, unknown item 99 → slot 0, padding → PAD.
    assert users["history"][0].tolist() == [PAD] * 4
    assert users["history"][4].tolist() == [0, encoder.item_index([12])[0], PAD, PAD]
    assert items["genres"][1].tolist() == [0, 1, 1] and items["genres"][5].tolist() == [0, 0, 0]
    u, v = model.user_tower(users), model.item_tower(items)
    assert u.shape == (6, 8) and v.shape == (6, 9)  # the item's vector, then its bias
    assert torch.allclose(u.norm(dim=-1), torch.ones(6)) and torch.allclose(
        v[:, :8].norm(dim=-1), torch.ones(6)
    )
    plain = build_model(replace(cfg, item_bias=False), encoder).eval()
    assert plain.item_tower(items).shape == (6, 8)


def test_one_dot_product_gives_the_score(encoder):
    """A vector index reproduces the model's scores: [u, 1] · [v / T, bias] = u·v / T + bias."""
    cfg = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4, temperature=0.2)
    model = build_model(cfg, encoder).eval()
    with torch.no_grad():
        u = model.user_tower(user_tensors(encoder, rows()))
        v = model.item_tower(item_tensors(encoder, rows()))
        assert v[:, 8].abs().sum() > 0  # the bias is not zero
        expected = u @ v[:, :8].T / 0.2 + v[:, 8]
        assert torch.allclose(model.score(u, v), expected, atol=1e-5)
        assert torch.allclose(query_vectors(u) @ index_vectors(v, cfg).T, expected, atol=1e-5)


def test_logq_correction_worked_example():
    """Two users, two items, temperature 1. Row 0 is (user 0, item 0); item 0 is sampled
    with probability 0.8 and item 1 with 0.2, so logQ lowers item 0's logit by log 0.8
    and item 1's by log 0.2."""
    cfg = TowerConfig(dim=2, temperature=1.0, logq=True)
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    log_q = torch.log(torch.tensor([0.8, 0.2]))
    got = softmax_loss(users, items, torch.tensor([2, 3]), log_q, cfg)
    row0 = [1.0 - math.log(0.8), 0.6 - math.log(0.2)]  # user 0 · items - log q
    row1 = [0.0 - math.log(0.8), 0.8 - math.log(0.2)]
    expected = (-(row0[0] - math.log(sum(map(math.exp, row0))))
                - (row1[1] - math.log(sum(map(math.exp, row1))))) / 2  # fmt: skip
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = softmax_loss(users, items, torch.tensor([2, 3]), log_q, replace(cfg, logq=False))
    assert plain.item() != pytest.approx(got.item())
    # The same item twice in a batch is not its own negative.
    dup = softmax_loss(users, items[[0, 0]], torch.tensor([2, 2]), None, cfg)
    assert dup.item() == pytest.approx(0.0, abs=1e-6)
    # Row weights (recency): a weighted mean of the rows' losses.
    ids = torch.tensor([2, 3])
    equal = softmax_loss(users, items, ids, log_q, cfg, weights=torch.tensor([0.3, 0.3]))
    assert equal.item() == pytest.approx(got.item(), rel=1e-6)
    only0 = softmax_loss(users, items, ids, log_q, cfg, weights=torch.tensor([1.0, 0.0]))
    assert only0.item() == pytest.approx(-(row0[0] - math.log(sum(map(math.exp, row0)))))
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    for loss in (bce_loss, triplet_loss):
        plain = loss(users, items, negatives, cfg)
        same = loss(users, items, negatives, cfg, torch.tensor([2.0, 2.0]))
        first = loss(users[:1], items[:1], negatives, cfg)
        assert same.item() == pytest.approx(plain.item(), rel=1e-6)
        assert loss(users, items, negatives, cfg, torch.tensor([1.0, 0.0])).item() == (
            pytest.approx(first.item(), rel=1e-6)
        )


def test_unseen_user_gets_finite_deterministic_embedding(encoder):
    cfg = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4)
    model = build_model(cfg, encoder).eval()
    cold = rows(1).assign(user_id=12345, occupation="astronaut", recent_item_ids=[None])
    batch = user_tensors(encoder, cold)
    assert batch["user"].tolist() == [0]  # the unknown-user slot
    a, b = model.user_tower(batch), model.user_tower(user_tensors(encoder, cold))
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_checkpoint_round_trip_reproduces_scores(encoder, tmp_path):
    cfg = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4, seed=3)
    torch.manual_seed(3)
    model = build_model(cfg, encoder).eval()
    result = TrainResult(model=model, encoder=encoder, config=cfg, best_epoch=1, val_metrics={})
    path = save_checkpoint(result, tmp_path / "model.pt")
    loaded, enc2, cfg2 = load_checkpoint(path)
    assert cfg2 == cfg and enc2.to_dict() == encoder.to_dict()
    users, items = user_tensors(enc2, rows()), item_tensors(enc2, rows())
    with torch.no_grad():
        before = model.score(model.user_tower(users), model.item_tower(items))
        after = loaded.score(loaded.user_tower(users), loaded.item_tower(items))
    assert torch.equal(before, after)


@pytest.mark.parametrize("training", [True, False])
def test_attention_newest_output_is_the_layers_own(training):
    """The attention encoder computes the newest position's output alone
    (`towers.model.newest_output`): it equals the full layer's output at that position, with
    padding masked, in training and in eval mode, and its gradients reach every weight."""
    from torch import nn

    from towers.model import newest_output

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        32, 2, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=True
    ).train(training)
    x = torch.randn(64, 20, 32)
    ignore = torch.rand(64, 20) < 0.4  # padding scattered over the older positions
    ignore[:, 0] = False
    ignore[:5, 1:] = True  # rows with the newest item alone
    full = layer(x, src_key_padding_mask=ignore)[:, 0]
    fast = newest_output(layer, x, ignore)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    # A key masked out does not move the output; one left in does.
    moved = x.clone()
    moved[ignore] += 10.0
    torch.testing.assert_close(newest_output(layer, moved, ignore), fast)
    assert not torch.allclose(newest_output(layer, x + 10.0 * ~ignore[..., None], ignore), fast)
    fast.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
