"""Training on the real pipeline's output (synthetic data with planted factors): the trained
model ranks validation items far better than the untrained one and than popularity, and
falls back to popularity when the user-item pairs are shuffled; training is deterministic
by seed; every loss trains; the refit on train + validation runs a fixed number of epochs."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from towers.baselines import Popularity
from towers.config import TowerConfig
from towers.data import load_source, load_tower_data, tower_data
from towers.evaluate import rank_metrics
from towers.train import build_model, evaluate_window, train

CFG = TowerConfig(dim=32, hidden=64, id_dim=32, epochs=3, patience=3, batch_size=256, lr=1e-3)


@pytest.fixture(scope="module")
def data(synthetic_build):
    settings, _ = synthetic_build
    return load_tower_data(settings, with_test=False, history=CFG.history)


@pytest.fixture(scope="module")
def interactions(synthetic_build):
    settings, _ = synthetic_build
    return pd.read_parquet(settings.paths.dataset / "interactions.parquet")


def _recall(model, data) -> float:
    return evaluate_window(model, data.val)["all"]["recall@20"]


def test_training_learns(data):
    torch.manual_seed(0)
    untrained = _recall(build_model(CFG, data.encoder).eval(), data)
    trained = train(CFG, data, progress=False)
    assert trained.best_epoch >= 1 and len(trained.history) == CFG.epochs
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]
    assert _recall(trained.model, data) > untrained + 0.03


def test_training_is_deterministic_by_seed(data):
    cfg = replace(CFG, epochs=1)
    a, b = train(cfg, data, progress=False), train(cfg, data, progress=False)
    for (name, x), (_, y) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("loss", ["bce", "triplet"])
def test_alternative_losses_train(data, loss):
    result = train(replace(CFG, loss=loss, epochs=2), data, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.val_metrics["recall@20"] > 0


def test_learns_the_planted_users_and_fails_on_shuffled_pairs(data, interactions):
    """With logQ and uniform negatives off, the in-batch softmax cannot profit from item
    popularity (popular items are the common negatives too), so what it ranks right it
    learned from who took what. With the training pairs shuffled (each row's item moved to
    a random other row) that signal is gone and recall collapses. A broken loss, a broken
    user tower or shuffled labels fail this test."""
    cfg = replace(CFG, logq=False, mixed_negatives=0)
    real = train(cfg, data, progress=False, epochs=8)
    perm = torch.randperm(len(data.train_items["item"]), generator=torch.Generator().manual_seed(1))
    shuffled = replace(data, train_items={k: v[perm] for k, v in data.train_items.items()})
    fake = train(cfg, shuffled, progress=False, epochs=8)
    real_recall, fake_recall = _recall(real.model, data), _recall(fake.model, shuffled)
    # Measured: 0.21 against 0.11.
    assert real_recall > 1.5 * fake_recall and real_recall > fake_recall + 0.05


def test_beats_popularity_on_planted_factors(data, interactions):
    """The default loss (logQ-corrected softmax with mixed negatives) ranks the validation
    window better than popularity."""
    val = data.val.split
    popularity = rank_metrics(
        Popularity().fit(interactions[interactions.event_timestamp < val.start], val.item_ids)
        .score_fn(val), val,
    )["all"]["recall@20"]  # fmt: skip
    result = train(replace(CFG, epochs=6), data, progress=False)
    # Measured: 0.29 against 0.27 on this small set (0.29 against 0.20 at 50K interactions).
    assert result.val_metrics["recall@20"] > popularity


def test_refit_runs_the_given_epochs_without_validation(synthetic_build):
    settings, _ = synthetic_build
    source = load_source(settings, with_test=True)
    refit = tower_data(source, ("train", "val"), CFG.history)
    assert refit.val is None and refit.test is not None
    # Users first seen in validation are known to the refit's encoder.
    assert refit.encoder.n_users > tower_data(source, ("train",), CFG.history).encoder.n_users
    with pytest.raises(ValueError, match="number of epochs"):
        train(CFG, refit, progress=False)
    result = train(CFG, refit, progress=False, epochs=2)
    assert [h["epoch"] for h in result.history] == [1, 2] and "val" not in result.history[0]
    assert evaluate_window(result.model, refit.test)["all"]["recall@20"] > 0


def test_row_negatives_are_uniform_items_with_their_own_training_features(data):
    """negatives_from="rows": items uniformly over those with training rows (not by
    frequency), each with the features of one of its own training rows."""
    from towers.train import negative_sampler

    sample = negative_sampler(data, replace(CFG, negatives_from="rows"))
    gen = torch.Generator().manual_seed(0)
    negatives, n_items = sample(20_000, gen)
    ids = data.train_items["item"]
    assert n_items == len(torch.unique(ids))
    counts = torch.bincount(negatives["item"], minlength=len(data.encoder.item_ids) + 2)
    drawn = counts[torch.unique(ids)].float()
    assert drawn.min() > 0 and drawn.std() / drawn.mean() < 0.5  # uniform, not Zipf
    # Each negative's numeric features are one of that item's training rows' features.
    for k in range(0, 20_000, 2_000):
        item = negatives["item"][k]
        rows = data.train_items["nums"][ids == item]  # (r, F)
        assert (rows == negatives["nums"][k]).all(dim=1).any()
