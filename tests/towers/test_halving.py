"""Training runs advanced epoch by epoch (towers.train.Training) and the successive halving
of the tuning (towers.tuning.tune): a run interleaved with another ends exactly as it would
alone, and only the leader after the probe epochs is trained to its end."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from towers.config import TowerConfig
from towers.data import load_tower_data
from towers.train import Training, train
from towers.tuning import _halving, tried_key, tune

CFG = TowerConfig(dim=16, hidden=32, id_dim=16, cat_dim=8, epochs=3, patience=1,
                  batch_size=512, history_encoder="gru")  # fmt: skip


@pytest.fixture(scope="module")
def data(synthetic_build):
    settings, _ = synthetic_build
    return load_tower_data(settings, with_test=False, history=CFG.history)


def test_an_interleaved_run_ends_as_it_would_alone(data):
    """Dropout draws from torch's global generator: each run keeps its own, so epochs of
    another run in between change nothing."""
    alone = train(CFG, data, progress=False, epochs=2)
    a = Training(CFG, data, progress=False, epochs=2)
    b = Training(replace(CFG, temperature=0.5, seed=1), data, progress=False, epochs=2)
    a.epoch(), b.epoch(), b.epoch(), a.epoch()
    assert a.done and b.done
    interleaved = a.result()
    assert [h["loss"] for h in interleaved.history] == [h["loss"] for h in alone.history]
    for (name, x), (_, y) in zip(interleaved.model.state_dict().items(),
                                 alone.model.state_dict().items(), strict=True):  # fmt: skip
        assert torch.equal(x, y), name
    with pytest.raises(RuntimeError, match="ended"):
        a.epoch()


def test_tuning_continues_only_the_leader_of_each_stage(data):
    temperatures, half_lives = (0.05, 1.0), (0.0, 30.0)
    best, scores, _ = tune(CFG, data, temperatures, progress=False, half_lives=half_lives,
                           prior=False, probe_epochs=1)  # fmt: skip
    first = {t: tried_key(t, 0.0) for t in temperatures}
    assert set(scores) == {*first.values(), tried_key(best.config.temperature, 30.0)}
    assert scores[tried_key(best.config.temperature, best.config.recency_half_life_days)] == max(
        scores.values()
    )
    assert best.val_metrics["recall@20"] == max(scores.values())
    # Alone, the chosen configuration trains to the same result.
    again = train(best.config, data, progress=False)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in best.history]


def test_tuning_with_the_prior_keeps_the_run_best_at_its_own_prior(data):
    """Each run is scored at the prior chosen for it; the best run's prior grid is returned,
    and a run cut at the probe keeps its model as it stood there (a copy: the leader's own
    training is not disturbed by being scored at the probe)."""
    best, scores, grid = tune(CFG, data, (0.05, 1.0), progress=False, half_lives=(0.0,),
                              probe_epochs=1)  # fmt: skip
    name = tried_key(best.config.temperature, 0.0)
    assert scores[name] == max(scores.values()) == max(grid.values())
    assert grid["none"] <= max(grid.values())
    if best.best_epoch > 1:  # the leader went on after being scored at the probe
        alone = train(replace(best.config, popularity_prior=0.0), data, progress=False)
        assert [h["loss"] for h in alone.history] == [h["loss"] for h in best.history]


def test_halving_cuts_every_run_but_the_leader_after_the_probe(data):
    runs = {t: Training(replace(CFG, temperature=t), data, progress=False) for t in (0.05, 1.0)}
    probed: dict[str, float] = {}
    final: dict[str, float] = {}
    best = _halving(runs, 1, lambda name, run: run.best, probed, final)
    leader = runs[best]
    assert leader.done and final[best] == leader.best == max(final.values())
    for name, run in runs.items():
        if name != best:
            assert not run.done and len(run.history) == 1
            assert run.score() <= leader.history[0]["val"]["recall@20"]
            assert final[name] == probed[name] == run.best
