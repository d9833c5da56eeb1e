"""A new model version, as the ``two_tower_model`` asset makes it, as plain functions: reuse
the version trained from the same data and config (by fingerprint), else train one, judge it
with the quality gate (``evaluation.gate_window``) and move it to ``gated`` or ``rejected``;
when it fails and no two-tower is current, build a fallback (``evaluation.fallback``).

A two-tower version holds two checkpoints (towers.release): ``checkpoint_eval.pt``, trained
on the train split, whose test scores are in metrics.json and which the gate judges, and
``checkpoint.pt``, the one served, refit on every row before ``as_of`` with the same
temperature and epochs; version.json's ``evaluated`` and ``served`` give each one's rows
and time range."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from recsys import fallback
from recsys.gate import GateDecision, quality_gate
from recsys.registry import GATED, REJECTED
from towers.rescore import EVALUATED, read_per_user

# What a version serves, in its fingerprint: a version whose checkpoint.pt was the evaluated
# model is not reused for the same data.
SERVED = "served: refit on train + val + test"


def fingerprint_of(settings: Any, config: dict[str, Any], temperatures: Any) -> str:
    """The fingerprint of a version trained on ``settings``' published data with ``config``
    and the temperature grid: equal fingerprints, same model (``ModelRegistry.find``)."""
    from recsys.io import read_json
    from recsys.registry import fingerprint

    paths = settings.paths
    training = read_json(paths.training / "summary.json")
    training.pop("path", None)  # where it was written is not what it holds
    return fingerprint(
        read_json(paths.dataset / "manifest.json"),
        training,
        read_json(paths.features / "manifest.json").get("rows"),
        config,
        list(temperatures),
        SERVED,
    )


def reused_decision(reg: Any, version: str, against_baseline: bool = True) -> GateDecision:
    """The gate of a version reused as it is (no other version to compare it with): its own
    metrics and per-user scores against the best baseline."""
    return quality_gate(reg.metrics(version), per_user=read_per_user(reg.path(version)),
                        against_baseline=against_baseline)  # fmt: skip


@dataclass(frozen=True)
class Trained:
    """A version written by :func:`train_version` (staged, not yet gated)."""

    version: str
    info: dict[str, Any]  # its version.json
    run: dict[str, Any]  # towers.release's record of the two-tower run (temperature, ...)
    seconds: dict[str, float]  # wall time of each phase of towers.release
    metrics: dict[str, Any]  # its metrics.json


def train_version(settings: Any, reg: Any, run_id: str, print_: str, base: Any,
                  temperatures: Any) -> Trained:  # fmt: skip
    """Train, score and export a two-tower version into ``reg`` (staged, by run ``run_id``):
    temperature and epochs chosen on validation from ``base`` (a ``TowerConfig``), scored on
    the test window against every baseline, and refit on all data up to ``as_of``."""
    from towers.export import export_version
    from towers.release import train_release

    version = reg.new_version(print_)
    from evaluation.catalogue import published_catalogue

    # version.json, written when complete; its catalogue: what its item table will hold.
    info: dict[str, Any] = {"fingerprint": print_,
                            "catalogue": published_catalogue(settings.paths.dataset)}  # fmt: skip
    with reg.build(version, run_id, info) as folder:
        summary = train_release(settings, ("softmax",), base, folder, progress=False,
                          temperatures=temperatures, serve=True,
                          files=(EVALUATED, "checkpoint.pt"))  # fmt: skip
        export_version(folder)  # the user tower as the server runs it (towers.export)
        run = summary["runs"]["softmax"]
        chosen = summary["choices"]["two-tower (softmax)"]
        info.update(temperature=run["temperature"], best_epoch=run["best_epoch"],
                    recency_half_life_days=run["recency_half_life_days"],
                    popularity_prior=run["popularity_prior"],
                    evaluated=chosen["evaluated"], served=chosen["served"])  # fmt: skip
        metrics = json.loads((folder / "metrics.json").read_text())
    return Trained(version, info, run, summary["seconds"], metrics)


def gate_version(settings: Any, reg: Any, run_id: str, version: str, current: str | None,
                 metrics: dict[str, Any], resamples: int = 1000,
                 against_baseline: bool = True) -> tuple[GateDecision, dict[str, Any]]:  # fmt: skip
    """The quality gate of a staged ``version`` against the best baseline and ``current``
    (``evaluation.gate_window``), and its transition: ``gated`` when it passes, else
    ``rejected``. Returns (the decision, what was judged on the window)."""
    from evaluation.gate_window import gate_on_one_window

    decision, judged = gate_on_one_window(settings, reg, version, current, metrics, resamples,
                                          against_baseline)  # fmt: skip
    reg.transition(version, GATED if decision.passed else REJECTED, run_id,
                   f"quality gate {decision.verdict}")  # fmt: skip
    return decision, judged


def needs_fallback(decision: GateDecision, reg: Any, current: str | None) -> bool:
    """The two-tower failed and no two-tower is current: nothing a two-tower could keep
    serving, so a baseline is promoted instead, explicitly."""
    return not decision.passed and (current is None or fallback.is_fallback(reg.info(current)))


def build_fallback(settings: Any, reg: Any, run_id: str, print_: str, rejected: str,
                   choice: Any = None) -> tuple[str, str]:  # fmt: skip
    """A fallback version built and gated by run ``run_id``: (version, why). ``choice``: the
    baseline, as ``evaluation.fallback.build`` takes it (default: chosen on the rejected
    version's validation scores)."""
    import pandas as pd

    from evaluation.catalogue import published_catalogue
    from evaluation.fallback import build
    from recsys.settings import run_as_of

    paths = settings.paths
    version = reg.new_version(print_)
    why = build(
        reg, version, run_id, {"fingerprint": print_, "rejected_two_tower": rejected,
                               "catalogue": published_catalogue(paths.dataset)},
        reg.path(rejected), pd.read_parquet(paths.dataset / "interactions.parquet"),
        pd.read_parquet(paths.dataset / "items.parquet").item_id.to_numpy(), run_as_of(settings),
        pd.read_parquet(paths.dataset / "users.parquet"), choice,
    )  # fmt: skip
    reg.transition(version, GATED, run_id, f"fallback: two-tower {rejected} failed the "
                   f"quality gate and no two-tower is current; {why}")  # fmt: skip
    return version, why
