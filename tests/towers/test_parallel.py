"""Training beside the tuning (towers.parallel), bit for bit what it gives in one process:
the tuning with its probes in a child process chooses the same run with the same weights;
the refit started ahead gives the weights of the refit run here, whether the child is
behind or ahead of the epoch asked for; a refit for another config, or whose child failed,
is dropped, and a child whose parent goes stops (tier 1, on the synthetic foundation
build)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recsys.settings import PROJECT_ROOT
from towers.config import TowerConfig
from towers.data import load_source, load_tower_data, tower_data
from towers.parallel import Probes, RefitAhead, trained_alike, workdir
from towers.train import Training, train
from towers.tuning import _NextStage, tried_key, tune

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
        ahead = RefitAhead(all_rows)
        ahead.start(CFG)
        assert ahead.child is not None
        job, proc = ahead.child.job, ahead.child.proc
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
    with RefitAhead(all_rows) as ahead:
        assert ahead.result(CFG, 1) is None  # none started
        ahead.start(CFG)
        assert ahead.child is not None
        child = ahead.child
        other = replace(CFG, temperature=1.0)
        assert not trained_alike(other, CFG)
        assert ahead.result(other, 1) is None
        assert child.proc.poll() is not None and not child.job.exists()
        ahead.start(CFG)
        assert ahead.result(CFG, CFG.epochs + 1) is None  # more than it was started for
        ahead.start(CFG)
        child = ahead.child
    assert child.proc.poll() is not None and not child.job.exists()  # left: stopped
    with pytest.raises(ValueError, match="no validation window"):
        RefitAhead(replace(all_rows, val=object()))


def test_a_failed_refit_is_dropped_with_its_log(all_rows, caplog):
    ahead = RefitAhead(all_rows)
    ahead.start(CFG)
    assert ahead.child is not None
    child = ahead.child
    child.proc.kill()
    with caplog.at_level(logging.ERROR, logger="towers.parallel"):
        assert ahead.result(CFG, 2) is None
    assert "the refit started ahead failed" in caplog.text
    assert not child.job.exists()


def test_the_refit_stops_when_its_parent_goes(all_rows, tmp_path):
    # A parent that starts the refit and dies at once (a pipeline run stopped or killed).
    torch.save(all_rows, tmp_path / "rows.pt")
    script = (
        "import sys, os, torch\n"
        "from towers.parallel import RefitAhead\n"
        "from towers.config import TowerConfig\n"
        f"cfg = TowerConfig.from_dict({CFG.to_dict()!r})\n"
        f"ahead = RefitAhead(torch.load({str(tmp_path / 'rows.pt')!r}, weights_only=False))\n"
        "ahead.start(cfg)\n"
        "print(ahead.child.proc.pid, ahead.child.job, flush=True)\n"
        "os._exit(0)\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, check=True)  # fmt: skip
    pid, job = done.stdout.split()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, "the refit trains on without its parent"
        time.sleep(0.2)
    assert not Path(job).exists()  # nor leaves the rows behind


def test_folders_of_processes_that_no_longer_run_are_removed(tmp_path):
    done = subprocess.Popen(["true"])
    done.wait()  # a process that ran and is gone
    dead = tmp_path / f"{done.pid}-probes-x"
    live = tmp_path / f"{os.getppid()}-refit-y"
    other = tmp_path / "not-ours"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "data.pt").write_bytes(b"rows")
    assert workdir(tmp_path) == tmp_path
    assert not dead.exists() and live.exists() and other.exists()


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


@pytest.fixture(scope="module")
def tuning_rows(synthetic_build):
    settings, _ = synthetic_build
    return load_tower_data(settings, with_test=False, history=CFG.history)


def _same_run(a, b) -> None:
    def record(run):  # every epoch's loss and validation metrics; not its wall time
        return [{k: v for k, v in h.items() if k != "seconds"} for h in run.history]

    assert a.config == b.config and a.best_epoch == b.best_epoch
    assert record(a) == record(b)
    _same_weights(a.model, b.model)


def test_tuning_with_probes_beside_is_the_tuning_alone(tuning_rows):
    cfg = replace(CFG, temperature=1.0, patience=1, epochs=3)
    temperatures, half_lives = (0.05, 0.2, 1.0), (0.0, 30.0)
    leaders: list[TowerConfig] = []
    alone = tune(cfg, tuning_rows, temperatures, False, half_lives, parallel=False)
    beside = tune(cfg, tuning_rows, temperatures, False, half_lives, parallel=True,
                  on_leader=leaders.append)  # fmt: skip
    assert beside[1] == alone[1] and beside[2] == alone[2]  # every run's score, the prior grid
    _same_run(beside[0], alone[0])
    # Told of the run to refit (once its second stage was probed, and again as it went on).
    assert leaders and all(trained_alike(leader, alone[0].config) for leader in leaders)


def test_a_next_stage_started_for_another_leader_is_dropped(tuning_rows):
    """The second stage's probes start beside the first stage's leader; if another run
    ends up best there, they are stopped and the stage starts afresh."""
    probed: dict[str, float] = {}
    with Probes(tuning_rows) as probes:
        ahead = _NextStage(tuning_rows, False, (30.0,), 1, lambda name, run: 0.0, probed, {},
                           None, probes)  # fmt: skip
        leader = replace(CFG, temperature=0.05)
        ahead.begin(leader)
        (child,) = ahead.started.values()
        assert child.proc.poll() is None and ahead.runs[tried_key(0.05, 30.0)].cfg == replace(
            leader, recency_half_life_days=30.0)  # fmt: skip
        other = Training(replace(CFG, temperature=1.0), tuning_rows, progress=False)
        assert ahead.stage(other) == ({}, {})
        assert child.proc.poll() is not None


def test_a_failed_probe_is_logged_and_leaves_the_run_to_train_here(tuning_rows, caplog):
    run = Training(CFG, tuning_rows, progress=False)
    with Probes(tuning_rows) as probes:
        child = probes.start(run, 1)
        child.proc.kill()
        with caplog.at_level(logging.ERROR, logger="towers.parallel"):
            assert not probes.take(child, run)
        folder = probes.folder
    assert "a probe in a child process failed" in caplog.text
    assert run.history == [] and not child.job.exists()
    assert folder is not None and not folder.exists()
