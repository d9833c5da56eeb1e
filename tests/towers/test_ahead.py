"""The refit started ahead (towers.ahead), in a child process beside the tuning, gives the
weights of the refit run here, bit for bit, whether the child is behind or ahead of the
epoch asked for; a refit for another config, or whose child failed, is dropped (tier 1, on
the synthetic foundation build)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest
import torch

from towers.ahead import RefitAhead, trained_alike
from towers.config import TowerConfig
from towers.data import load_source, tower_data
from towers.train import train

CFG = TowerConfig(dim=16, hidden=32, id_dim=16, epochs=4, patience=2, batch_size=512,
                  temperature=0.2)  # fmt: skip
ALL = ("train", "val", "test")


@pytest.fixture(scope="module")
def all_rows(synthetic_build):
    settings, _ = synthetic_build
    return tower_data(load_source(settings, with_test=True, with_as_of=True), ALL, CFG.history)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _wait_for(path, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_the_refit_started_ahead_is_the_refit_run_here(all_rows):
    # The popularity prior is chosen after training, when the refit is already running.
    chosen = replace(CFG, popularity_prior=0.5, popularity_feature="item_count_7d")
    assert trained_alike(chosen, CFG)
    for epochs, wait_for in ((2, None), (2, "epoch-3.pt"), (3, None)):
        ahead = RefitAhead(CFG, all_rows)
        job, proc = ahead.job, ahead.proc
        if wait_for:  # the child is past the epoch asked for: its weights were kept
            _wait_for(job / wait_for)
        taken = ahead.result(chosen, epochs)
        assert taken is not None
        here = train(CFG, all_rows, progress=False, epochs=epochs)
        _same_weights(taken.model, here.model)
        assert taken.config == chosen and taken.model.cfg == chosen
        assert taken.best_epoch == here.best_epoch == epochs
        assert [h["loss"] for h in taken.history] == [h["loss"] for h in here.history]
        assert proc.poll() is not None and not job.exists()


def test_a_refit_for_another_config_is_dropped(all_rows):
    ahead = RefitAhead(CFG, all_rows)
    other = replace(CFG, temperature=1.0)
    assert not trained_alike(other, CFG)
    assert ahead.result(other, 1) is None
    assert ahead.proc.poll() is not None and not ahead.job.exists()
    ahead = RefitAhead(CFG, all_rows)
    assert ahead.result(CFG, CFG.epochs + 1) is None  # more than it was started for
    with pytest.raises(ValueError, match="no validation window"):
        RefitAhead(CFG, replace(all_rows, val=object()))


def test_a_failed_refit_is_dropped_with_its_log(all_rows, caplog):
    ahead = RefitAhead(CFG, all_rows)
    ahead.proc.kill()
    with caplog.at_level(logging.ERROR, logger="towers.ahead"):
        assert ahead.result(CFG, 2) is None
    assert "the refit started ahead failed" in caplog.text
    assert not ahead.job.exists()
