"""Distributed training (towers.ddp) against one process, on the synthetic build's data: the
first step's gradient equals one process's with the global batch (the all-gathered in-batch
negatives), a 2-process run under torchrun trains a model in the same checkpoint format that
scores as one process's within the noise of the validation users, and a failing rank fails
the run with its error."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recsys.settings import Settings
from towers.checkpoint import load_checkpoint, save_checkpoint
from towers.config import TowerConfig
from towers.data import load_tower_data
from towers.ddp import Launch, launch_of, run_torchrun, train_distributed
from towers.release import train_release
from towers.rescore import per_user_of
from towers.train import train

CFG = TowerConfig(dim=32, hidden=64, id_dim=32, epochs=4, patience=2, batch_size=256,
                  mixed_negatives=64, threads=1)  # fmt: skip
HERE = Path(__file__).parent
TWO = Launch(processes=2, timeout_seconds=120)


@pytest.fixture(scope="module")
def data(synthetic_build):
    settings, _ = synthetic_build
    return load_tower_data(settings, with_test=False, history=CFG.history)


def test_first_step_gradient_is_one_process_gradient(data, tmp_path):
    """Same seed, no dropout: each of 2 ranks takes half of the first global batch, and the
    averaged gradient must equal one process's on the whole batch. Without the autograd
    all-gather, each rank would score its rows against its own half of the batch (other
    negatives) and the item tower would miss the gradient of the other rank's rows. With the
    crop (history_crop), the ranks cut the rows one process cuts."""
    still = replace(CFG, dropout=0.0, user_id_dropout=0.0, item_id_dropout=0.0)
    configs = {"softmax": still, "softmax weighted": replace(still, recency_half_life_days=30.0),
               "bce": replace(still, loss="bce"),
               "softmax cropped": replace(still, history_crop=0.5)}  # fmt: skip
    torch.save({"configs": {k: c.to_dict() for k, c in configs.items()}, "data": data},
               tmp_path / "job.pt")  # fmt: skip
    run_torchrun(TWO, [str(HERE / "ddp_grad_worker.py"), str(tmp_path)], tmp_path / "logs", 1)
    found = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert set(found) == set(configs)
    for name, pair in found.items():
        assert pair["ddp"].keys() == pair["one"].keys() and len(pair["one"]) > 10, name
        for param, one in pair["one"].items():
            assert one.abs().max() > 0 or "bias" in param, (name, param)
            torch.testing.assert_close(pair["ddp"][param], one, atol=1e-5, rtol=1e-5,
                                       msg=lambda m, n=name, p=param: f"{n} {p}: {m}")  # fmt: skip
    # The crop did cut rows: the user ids' gradient is not the uncut run's.
    ids = "user_tower.user.weight"
    assert not torch.allclose(found["softmax cropped"]["one"][ids], found["softmax"]["one"][ids])


def test_two_processes_train_as_one_within_noise(data, tmp_path):
    one = train(CFG, data, progress=False)
    two = train_distributed(CFG, data, TWO)
    assert 1 <= two.best_epoch <= len(two.history) <= CFG.epochs
    assert two.history[-1]["loss"] < two.history[0]["loss"]
    # The same file format: the existing loader rebuilds both.
    paths = [save_checkpoint(r, tmp_path / f"{n}.pt") for n, r in (("one", one), ("two", two))]
    saved = [torch.load(p, weights_only=True) for p in paths]
    assert saved[0].keys() == saved[1].keys()
    assert saved[0]["config"] == saved[1]["config"] and saved[0]["encoder"] == saved[1]["encoder"]
    shapes = [{k: v.shape for k, v in s["state_dict"].items()} for s in saved]
    assert shapes[0] == shapes[1]
    model, _, _ = load_checkpoint(paths[1])
    assert data.val is not None
    recalls = [per_user_of(m, data.val)["recall@20"] for m in (one.model, model)]
    # The two runs differ as two seeds do (other dropout masks, the 2-process run's rows
    # grouped otherwise within a batch), so their gap is noise of the validation users: the
    # mean of the per-user differences must lie within 3 standard errors of it (a paired
    # test on the same users; a broken 2-process run drops far below).
    diff = recalls[1] - recalls[0]  # (U,)
    noise = 3 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean()) <= noise, (recalls[0].mean(), recalls[1].mean(), noise)
    # The checkpoint holds the best epoch's weights, the ones rank 0 scored.
    assert two.val_metrics["recall@20"] == pytest.approx(recalls[1].mean())


def test_a_failing_rank_fails_the_run_with_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="rank 1 fails on purpose"):
        run_torchrun(TWO, [str(HERE / "ddp_fail_worker.py")], tmp_path / "logs", 1)


def test_a_bad_config_fails_every_rank_with_the_fix(data):
    with pytest.raises(RuntimeError, match=r"mixed_negatives \(63\) must divide"):
        train_distributed(replace(CFG, mixed_negatives=63), data, TWO, epochs=1)


def test_the_release_refits_the_served_model_on_two_processes(
    synthetic_build, tmp_path, monkeypatch
):
    settings, _ = synthetic_build
    launched = []

    def spy(*args, **kwargs):
        launched.append(args[2])
        return train_distributed(*args, **kwargs)

    monkeypatch.setattr("towers.release.train_distributed", spy)
    two = settings.model_copy(update={"train_processes": 2, "train_timeout_seconds": 120.0})
    cfg = replace(CFG, epochs=2)
    summary = train_release(two, ("softmax",), cfg, tmp_path, progress=False,
                            temperatures=(0.2,), serve=True)  # fmt: skip
    served = summary["choices"]["two-tower (softmax)"]["served"]
    model, encoder, loaded = load_checkpoint(tmp_path / served["checkpoint"])
    assert loaded.temperature == 0.2 and len(encoder.user_ids) > 0
    assert [launch.processes for launch in launched] == [2]  # the served refit, once


def test_one_process_trains_in_process(tmp_path):
    assert launch_of(Settings(data_dir=tmp_path)) is None
    launch = launch_of(Settings(data_dir=tmp_path, train_processes=2))
    assert launch is not None and launch.processes == 2 and launch.rdzv_endpoint is None
    with pytest.raises(ValueError, match="train_rdzv_endpoint"):
        Settings(data_dir=tmp_path, train_nnodes=2)
