"""The release run: one two-tower per loss tuned on validation, scored with every baseline on
the temporal test window (warm and cold users reported apart, every model through
``towers.evaluate``), its checkpoints and the report written. The pipeline's
``two_tower_model`` asset runs it with ``serve=True``; ``python -m towers compare`` runs it
for research (several losses, no served checkpoint).

Protocol. Every model chooses what it can on the validation window only: the two-tower its
temperature (from ``TEMPERATURES``), its epoch (early stopping), its recency half-life and its
popularity prior (:func:`towers.tuning.choose_prior`, re-scoring only), recent popularity its
trailing window, EASE its λ, ItemKNN its neighbours and shrinkage, segment popularity its
profile fields (:func:`towers.baseline_scores.baselines`; the choices go into metrics.json under ``choices``). Then,
for the test window (``test_start`` to ``as_of``), the baselines are fitted on everything
before ``test_start`` (train + validation); the two-tower keeps the weights trained on the
training split and reads each user's and item's features as of ``test_start`` through Feast
(so its inputs include the validation weeks, as they would online). ``refit=True`` instead
retrains it on the train and validation rows for the epochs chosen on validation; on
MovieLens-100K that scored lower (README, "Two-tower results"). Items a user interacted with
before ``test_start`` are removed from the ranking (``towers.evaluate``).

    python -m towers compare --losses softmax bce triplet
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from towers.baseline_scores import BASELINE_NOTES, baselines
from towers.checkpoint import save_checkpoint
from towers.config import TowerConfig
from towers.data import TowerData, TowerSource, load_source, tower_data
from towers.ddp import launch_of, train_distributed
from towers.evaluate import aggregate
from towers.parallel import RefitAhead, beside
from towers.report import report
from towers.train import TrainResult, train
from towers.tuning import TEMPERATURES, prior_key, tune

METRIC = "recall@20"  # the per-user score kept for the quality gate (PER_USER)


def curves_png(runs: dict[str, TrainResult], k: int) -> bytes:
    """Training loss and validation recall@k per epoch, one line per loss."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    loss_ax, recall_ax = fig.subplots(1, 2)
    for name, run in runs.items():
        epochs = [h["epoch"] for h in run.history]
        loss_ax.plot(epochs, [h["loss"] for h in run.history], marker="o", label=name)
        recall_ax.plot(
            epochs, [h["val"][f"recall@{k}"] for h in run.history], marker="o", label=name
        )
    loss_ax.set(title="training loss", xlabel="epoch")
    recall_ax.set(title=f"validation recall@{k}", xlabel="epoch")
    recall_ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def fit_span(source: TowerSource, fit_on: tuple[str, ...]) -> dict[str, Any]:
    """What a model trained on the splits ``fit_on`` saw: its rows and their time range."""
    table = source.table
    rows = table.filter(pc.is_in(table.column("split"), pa.array(list(fit_on))))
    when = rows.column("event_timestamp")
    first, last = pc.min(when).as_py(), pc.max(when).as_py()
    return {"splits": list(fit_on), "rows": rows.num_rows,
            "first_event": str(first), "last_event": str(last)}  # fmt: skip


PER_USER = "per_user_test.parquet"  # each model's test recall@20 per user (recsys.gate)


def train_release(
    settings: Any,
    losses: tuple[str, ...] = ("softmax", "bce", "triplet"),
    base: TowerConfig | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    refit: bool = False,
    temperatures: tuple[float, ...] = TEMPERATURES,
    serve: bool = False,
    files: tuple[str, str] = ("two_tower_{loss}.pt", "two_tower_{loss}_served.pt"),
) -> dict[str, Any]:
    """Train one two-tower per loss, score everything on test, write the report.

    Each loss's evaluated model is saved as ``files[0]`` (its scores are the report's). With
    ``serve``, the model to serve is trained too, as ``files[1]`` (``{loss}`` in either is
    the loss): the same temperature and epoch count, refit on every row before ``as_of``
    (train + val + test), so the newest users and items have embeddings. It is not scored:
    no window is left that it has not seen. An epoch is one pass over the rows, so the refit
    runs as many passes as were chosen on validation (more steps on more rows), the
    convention when a model is retrained on all data after early stopping. The refits run
    under ``towers.ddp`` when ``settings.train_processes`` (or ``train_nnodes``) asks for more
    than one process; tuning on validation stays in this process (many short runs advanced a
    few epochs each). With one process, two cores or more and ``settings.train_in_parallel``,
    the tuning's probes train two at a time and the served refit starts in a child process
    as soon as the tuning's leader is known, beside it (``towers.parallel``: the same
    weights).
    """
    from recsys.io import atomic_write_bytes
    from towers.rescore import per_user_of

    base = base or TowerConfig()
    launch = launch_of(settings)  # the refits' processes (towers.ddp); None: this one

    # Who trained the refits, recorded with each checkpoint: processes in all (towers.ddp).
    trained_by = (
        {"processes": 1}
        if launch is None
        else {
            "processes": launch.processes * launch.nnodes,
            "backend": "gloo",
            "launcher": "torchrun",
        }
    )

    def fit(cfg: TowerConfig, data: TowerData, epochs: int) -> TrainResult:
        if launch is None:
            return train(cfg, data, progress=progress, epochs=epochs)
        return train_distributed(cfg, data, launch, epochs)

    out_dir = Path(out_dir or settings.paths.data_dir / "evaluation")
    seconds: dict[str, float] = {}  # wall time of each phase, in runs.json
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(seconds.get(phase, 0.0) + now - clock, 2)
        clock = now

    source = load_source(settings, with_test=True, with_as_of=serve)
    lap("load features")
    data = tower_data(source, ("train",), base.history)
    fit_on = ("train", "val") if refit else ("train",)
    final_data = tower_data(source, fit_on, base.history) if refit else data
    all_data = tower_data(source, ("train", "val", "test"), base.history) if serve else None
    assert data.val is not None and data.test is not None
    lap("encode rows")
    users = pd.read_parquet(settings.paths.dataset / "users.parquet")
    per_user: dict[str, np.ndarray] = {}
    results, choices = baselines(data.val.split, data.test.split, source.interactions, users,
                                 per_user=per_user)  # fmt: skip
    lap("baselines")
    runs: dict[str, TrainResult] = {}
    tuning: dict[str, dict[str, float]] = {}
    priors: dict[str, dict[str, float]] = {}
    # With one process training and a core to spare, the tuning's probes train two at a time
    # and the served refit starts beside the tuning's leader (towers.parallel).
    parallel = launch is None and beside(settings.train_in_parallel)
    for loss in losses:
        ahead = RefitAhead(all_data) if parallel and all_data is not None else None
        with ahead or nullcontext():  # a refit not taken, or after a failure, stops here
            cfg = replace(base, loss=loss)  # type: ignore[arg-type]
            runs[loss], tuning[loss], priors[loss] = tune(
                cfg,
                data,
                temperatures,
                progress,
                on_leader=ahead.start if ahead else None,
                parallel=parallel,
            )
            lap("tune on validation")
            chosen, epochs = runs[loss].config, runs[loss].best_epoch
            final = fit(chosen, final_data, epochs) if refit else runs[loss]
            assert final_data.test is not None
            name = f"two-tower ({loss})"
            scores = per_user_of(final.model, final_data.test)
            results[name] = aggregate(scores, final_data.test.split)
            per_user[name] = scores[METRIC]
            evaluated_file, served_file = (file.format(loss=loss) for file in files)
            save_checkpoint(final, out_dir / evaluated_file)
            lap("score on test")
            choices[name] = {"temperature": chosen.temperature, "best_epoch": epochs,
                             "recency_half_life_days": chosen.recency_half_life_days,
                             "popularity_prior": prior_key(chosen.popularity_prior,
                                                           chosen.popularity_feature),
                             "evaluated": {"checkpoint": evaluated_file, "trained_by": trained_by
                                           if refit else {"processes": 1},
                                           **fit_span(source, fit_on)}}  # fmt: skip
            if all_data is not None:
                taken = ahead.result(chosen, epochs) if ahead else None
                served = taken or fit(chosen, all_data, epochs)
                save_checkpoint(served, out_dir / served_file)
                choices[name]["served"] = {"checkpoint": served_file, "trained_by": trained_by,
                                           "beside_tuning": taken is not None,
                                           **fit_span(source, ("train", "val", "test"))}  # fmt: skip
                lap("refit on all data")
    notes = BASELINE_NOTES + (
        " The two-tower's scores are those of its evaluated checkpoint (trained without the "
        "test window; see its choices); the served checkpoint, refit on all data up to "
        "as_of, is not scored." if serve else ""
    )  # fmt: skip
    paths = report(results, out_dir, f"test window, {settings.dataset}", choices, notes)
    frame = pd.DataFrame({"user_id": data.test.split.user_ids, **per_user})
    atomic_write_bytes(out_dir / PER_USER, frame.to_parquet(index=False))
    atomic_write_bytes(out_dir / "training_curves.png", curves_png(runs, base.select_k))
    lap("report")
    summary = {
        "seconds": seconds,
        "results": results,
        "ease_l2": choices["EASE"].get("l2"),
        "choices": choices,
        "refit": refit,
        "runs": {
            k: {
                "temperature": r.config.temperature,
                "recency_half_life_days": r.config.recency_half_life_days,
                "val_recall_tried": tuning[k],
                "popularity_prior": prior_key(
                    r.config.popularity_prior, r.config.popularity_feature
                ),
                "val_recall_by_prior": priors[k],
                "best_epoch": r.best_epoch,
                "seconds": r.seconds,
                "history": r.history,
            }
            for k, r in runs.items()
        },  # fmt: skip
        "files": {k: str(v) for k, v in paths.items()},
    }
    atomic_write_bytes(out_dir / "runs.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
