"""The sequence-aware user tower: it reads the order, ratings and times of the history (and
the mean-pooling ablation does not), an empty history gives a finite vector, the encoder's
per-position features are the documented arithmetic, and the ONNX graph equals the module
on histories of every length."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from recsys.features.encoding import PAD, TIME_CLIP, USER_INPUTS, FeatureEncoder
from tests.towers.test_model import GENRES, T0, rows
from towers.config import TowerConfig
from towers.data import user_tensors
from towers.export import user_tower_onnx
from towers.train import build_model

CFG = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4, history_dim=8)
SEQUENCE = ("gru", "attention")


@pytest.fixture
def encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(rows(), GENRES, history=4)


def tower(encoder: FeatureEncoder, kind: str, **overrides):
    torch.manual_seed(0)
    model = build_model(replace(CFG, history_encoder=kind, **overrides), encoder)
    return model.user_tower.eval()


def vectors(user_tower, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return user_tower(batch)


def edited(batch: dict[str, torch.Tensor], **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**batch, **tensors}


def test_history_features_are_standardised_ratings_and_log_hours(encoder):
    frame = rows()
    batch = user_tensors(encoder, frame)
    feats = batch["history_feats"]  # (6, 4, 4)
    assert feats.shape == (6, 4, 4) and feats.dtype == torch.float32
    r_mean, r_std = encoder.stats["history_rating"]
    t_mean, t_std = encoder.stats["history_log_hours"]
    # Row 3: items rated 1, 3, 4 at T0 + 2 h, T0 + 1 min, T0; reference T0 + 4 days.
    hours = (4 * 86400 - np.array([7200, 60, 0])) / 3600
    want_t = np.clip((np.log1p(hours) - t_mean) / t_std, -TIME_CLIP, TIME_CLIP)
    np.testing.assert_allclose(feats[3, :3, 0], (np.array([1.0, 3, 4]) - r_mean) / r_std, 1e-6)
    np.testing.assert_allclose(feats[3, :3, 2], want_t, rtol=1e-6)
    assert feats[3, :3, [1, 3]].abs().sum() == 0  # nothing missing
    assert feats[3, 3].abs().sum() == 0 and feats[0].abs().sum() == 0  # padding: zeros
    assert feats[4, 0, 1] == 1 and feats[4, 0, 0] == 0  # NaN rating: the missing flag
    # `now` replaces each row's event_timestamp as the reference (serving: request time).
    later = user_tensors(encoder, frame, now=T0 + 400 * 86400)["history_feats"]
    assert (later[1:, :, 2] >= feats[1:, :, 2]).all() and not torch.equal(later, feats)
    assert torch.equal(later[..., [0, 1, 3]], feats[..., [0, 1, 3]])


@pytest.mark.parametrize("kind", SEQUENCE)
def test_the_order_of_the_history_changes_the_user_vector(encoder, kind):
    batch = user_tensors(encoder, rows())
    user_tower = tower(encoder, kind)
    base = vectors(user_tower, batch)
    # Row 3 holds three items: reverse them with their features (a pure reordering).
    perm = torch.tensor([2, 1, 0, 3])
    history, feats = batch["history"].clone(), batch["history_feats"].clone()
    history[3], feats[3] = history[3, perm], feats[3, perm]
    shuffled = vectors(user_tower, edited(batch, history=history, history_feats=feats))
    assert not torch.allclose(shuffled[3], base[3], atol=1e-4)
    others = [0, 1, 2, 4, 5]
    assert torch.equal(shuffled[others], base[others])
    # Mean pooling ignores the order: the ablation reproduces the old tower.
    mean_tower = tower(encoder, "mean")
    before = vectors(mean_tower, batch)
    after = vectors(mean_tower, edited(batch, history=history, history_feats=feats))
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("kind", SEQUENCE)
def test_ratings_and_times_change_the_user_vector(encoder, kind):
    batch = user_tensors(encoder, rows())
    feats = batch["history_feats"]
    rerated, retimed = feats.clone(), feats.clone()
    rerated[3, :3, 0] = -rerated[3, :3, 0] + 0.5
    retimed[3, :3, 2] = retimed[3, :3, 2] + 1.0
    user_tower = tower(encoder, kind, history_ratings=True, history_times=True)
    base = vectors(user_tower, batch)
    for changed in (rerated, retimed):
        got = vectors(user_tower, edited(batch, history_feats=changed))
        assert not torch.allclose(got[3], base[3], atol=1e-4)
    # Switched off, the rating (or the time) has no effect.
    blind = tower(encoder, kind, history_ratings=False, history_times=True)
    assert torch.equal(vectors(blind, batch), vectors(blind, edited(batch, history_feats=rerated)))
    timeless = tower(encoder, kind, history_ratings=True, history_times=False)
    assert torch.equal(
        vectors(timeless, batch), vectors(timeless, edited(batch, history_feats=retimed))
    )


@pytest.mark.parametrize("kind", ("mean", *SEQUENCE))
def test_an_empty_history_gives_a_finite_vector(encoder, kind):
    batch = user_tensors(encoder, rows())
    batch = edited(batch, history=torch.full_like(batch["history"], PAD),
                   history_feats=torch.zeros_like(batch["history_feats"]))  # fmt: skip
    user_tower = tower(encoder, kind)
    for training in (False, True):
        user_tower.train(training)
        out = user_tower(batch)  # (6, d)
        assert torch.isfinite(out).all(), (kind, training)
        out.sum().backward()  # gradients through an all-padding row are finite too
        grads = [p.grad for p in user_tower.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        user_tower.zero_grad()


@pytest.mark.parametrize("kind", SEQUENCE)
def test_onnx_graph_equals_the_module_on_histories_of_every_length(encoder, kind):
    import onnxruntime as ort

    user_tower = tower(encoder, kind, history_ratings=True)  # every input in use
    graph = ort.InferenceSession(user_tower_onnx(user_tower, encoder))
    rng = np.random.default_rng(1)
    n = 9
    lengths = np.arange(n) % (encoder.history + 1)  # 0 .. L, each at least once
    history = rng.integers(0, encoder.n_items, (n, encoder.history))
    history[np.arange(encoder.history)[None, :] >= lengths[:, None]] = PAD
    feats = rng.normal(size=(n, encoder.history, 4)).astype(np.float32)
    feats[history == PAD] = 0.0
    batch = {
        "user": rng.integers(0, encoder.n_users, n),
        "cats": np.stack([rng.integers(0, k, n) for k in encoder.cat_sizes()], axis=1),
        "nums": rng.normal(size=(n, 4)).astype(np.float32),
        "affinity": rng.dirichlet(np.ones(len(GENRES)), n).astype(np.float32),
        "history": history,
        "history_feats": feats,
    }
    got = graph.run(None, {name: batch[name] for name in USER_INPUTS})[0]
    want = vectors(user_tower, {k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    assert np.isfinite(want).all() and got.shape == want.shape == (n, CFG.dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
