"""The two-tower's choices on validation: temperature, recency half-life and epochs by
successive halving (:func:`tune`), then the popularity prior by re-scoring
(:func:`choose_prior`). The release (``towers.release``) and the backtest run them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from towers.baselines import MAX_VAL_USERS, best_of, sample_rows, sample_users, val_recall
from towers.config import TowerConfig
from towers.data import EvalWindow, TowerData, take
from towers.model import logits
from towers.parallel import Child, Probes, beside
from towers.train import Training, TrainResult, embed, level_unknown_items

log = logging.getLogger(__name__)

# Candidate softmax temperatures, chosen per dataset on validation: sharp scores suit
# strongly personal data (the planted synthetic factors: 0.05), flat ones data where the
# item prior carries most of the signal (MovieLens-100K's temporal split: 1.0).
TEMPERATURES = (0.05, 0.2, 1.0)


# Candidate half-lives (days) of the recency weight of training rows (TowerConfig.
# recency_half_life_days; 0: every row alike), tried at the chosen temperature: on
# MovieLens-100K's validation cuts 30 days helped on every cut, on planted-factor data,
# which does not drift, it only discards signal (README, "User tower history encoder").
HALF_LIVES = (0.0, 30.0)


# Popularity prior (TowerConfig.popularity_prior): the weights tried on validation, doubled
# past the largest while it ties or beats the count's other weights (up to MAX_PRIOR_WEIGHT),
# for each count it may weigh: the 7- and 30-day counts (recent popularity chose a 14-90
# day window on every MovieLens-100K backtest cut) and the all-time count.
PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
PRIOR_FEATURES = ("item_count_7d", "item_count_30d", "item_interaction_count")
MAX_PRIOR_WEIGHT = 64.0


def tried_key(temperature: float, half_life: float) -> str:
    """The name of one tuning run: "T=0.05", or "T=1, half-life 30d" when weighted."""
    return f"T={temperature:g}" + (f", half-life {half_life:g}d" if half_life else "")


def prior_key(weight: float, feature: str) -> str:
    """The name of one prior setting: "none", or "0.5 log1p(item_count_30d)"."""
    return f"{weight:g} log1p({feature})" if weight else "none"


def choose_prior(
    result: TrainResult, window: EvalWindow, weights: tuple[float, ...] = PRIOR_WEIGHTS,
    features: tuple[str, ...] = PRIOR_FEATURES, max_users: int | None = MAX_VAL_USERS,
) -> tuple[TrainResult, dict[str, float]]:  # fmt: skip
    """The popularity prior of ``result``'s model chosen on ``window`` (validation recall@
    ``select_k`` of all its users, at most ``max_users`` drawn at random): each weight times
    each count re-scores the same vectors, no training. Ties keep the smaller weight (no
    prior first). Returns (the run with the prior set in its config and model, validation
    recall by :func:`prior_key`)."""
    model, k = result.model, result.config.select_k
    cfg = replace(result.config, popularity_prior=0.0)
    model.set_config(cfg)
    rows = sample_rows(len(window.split.user_ids), max_users)
    split = sample_users(window.split, max_users)
    u = embed(model.user_tower, take(window.users, torch.from_numpy(rows)))  # (U, d)
    v = embed(model.item_tower, window.items)  # (N, d [+ 1]) without the prior

    def recall(prior: torch.Tensor | float) -> float:
        items, extra = v, prior
        if v.shape[1] > cfg.dim:
            # The prior in the bias column, then the items never seen levelled as the
            # chosen model's scores will have them (towers.train.tower_scores).
            items = v.clone()
            items[:, cfg.dim] += prior
            items = level_unknown_items(items, window.items["item"], u, cfg.unknown_item_bias,
                                        cfg)  # fmt: skip
            extra = 0.0

        # Scored a block of users at a time (rank_metrics sizes the blocks to the catalogue):
        # U x N scores would be 8 GB at 2,000 users and 1M items.
        def scores(r: np.ndarray) -> np.ndarray:
            return (logits(u[torch.from_numpy(r)], items, cfg) + extra).numpy()

        return val_recall(scores, split, k)

    tried: dict[tuple[float, str], float] = {(0.0, cfg.popularity_feature): recall(0.0)}
    for feature in features:
        counts = model.item_tower.log_count(window.items["nums"], feature)  # (N,)
        grid = sorted(w for w in weights if w > 0)
        while grid:
            w = grid.pop(0)
            tried[(w, feature)] = recall(w * counts)
            ours = [value for (x, f), value in tried.items() if f == feature or not x]
            if not grid and tried[(w, feature)] >= max(ours) and 2 * w <= MAX_PRIOR_WEIGHT:
                grid.append(2 * w)  # this count's best (or a tie) sits at the edge: extend
    weight, feature = best_of(tried)
    chosen = replace(cfg, popularity_prior=weight, popularity_feature=feature)
    model.set_config(chosen)
    scores = {prior_key(w, f): value for (w, f), value in tried.items()}
    log.info("popularity prior: validation recall@%d %s -> %s", k, scores,
             prior_key(weight, feature))  # fmt: skip
    return replace(result, config=chosen), scores


# Successive halving (Jamieson and Talwalkar, AISTATS 2016) over the candidates of each
# tuning stage: every candidate trains this many epochs, then only the best on validation
# continues to its early stop; the others stop there. On MovieLens-100K the best epoch is
# the 1st to 3rd, so the runs cut here would mostly have run their patience out for nothing.
PROBE_EPOCHS = 1

Score = Callable[[str, Training], float]
OnLeader = Callable[[TowerConfig], None]


def _halving(
    runs: dict[str, Training], probe: int, score: Score,
    probed: dict[str, float], final: dict[str, float], on_leader: OnLeader | None = None,
    probes: Probes | None = None, started: dict[str, Child] | None = None,
    between: Callable[[], None] | None = None,
) -> str:  # fmt: skip
    """Advance every run ``probe`` epochs (or to its end) and ``score`` it there, then the
    best of them to its end, scored again. ``probed`` and ``final`` receive each run's score
    at the probe and at its end (a run cut at the probe ends there); a run already in
    ``probed`` (the leader of an earlier stage) competes on its probe score without training.
    ``on_leader`` is given the leader's config before it goes on, and ``between`` is called
    before each of its epochs. Returns the run with the best final score.

    With ``probes`` (a core to spare, ``towers.parallel``), every other run to probe trains
    in a child process while this one trains the rest; ``started`` are runs already
    training in one. A run comes back from its child as it would have trained here."""
    pending = [name for name in runs if name not in probed]
    away = dict(started or {})
    if probes is not None:
        here = [name for name in pending if name not in away]
        away |= {name: probes.start(runs[name], probe) for name in here[1::2]}
    for name in pending:  # this process's share first, then the children's
        run = runs[name]
        while name not in away and not run.done and len(run.history) < probe:
            run.epoch()
    for name in pending:
        run = runs[name]
        if name in away and not (probes and probes.take(away[name], run)):  # failed: here
            while not run.done and len(run.history) < probe:
                run.epoch()
        probed[name] = final[name] = score(name, run)
    leader = max(runs, key=lambda name: probed[name])
    if on_leader is not None:
        on_leader(runs[leader].cfg)
    if not runs[leader].done:
        while not runs[leader].done:
            if between is not None:
                between()
            runs[leader].epoch()
        final[leader] = score(leader, runs[leader])
    return max(runs, key=lambda name: final[name])


class _NextStage:
    """The tuning's second stage (the other recency half-lives at the first stage's best
    temperature), probed in a child process while the first stage's leader trains on to its
    early stop in this one: its config is known once that leader is, and the leader is
    nearly always the first stage's best (:meth:`stage` checks). Between the leader's
    epochs (:meth:`poll`), a finished probe is taken and scored and the next one started;
    once all are scored, the run the second stage would continue is known, and
    ``on_leader`` hears of it (the refit starts then, ``towers.parallel``)."""

    def __init__(
        self, data: TowerData, progress: bool, half_lives: tuple[float, ...], probe: int,
        score: Score, probed: dict[str, float], scores: dict[str, float],
        on_leader: OnLeader | None, probes: Probes,
    ) -> None:  # fmt: skip
        self.data, self.progress, self.half_lives, self.probe = data, progress, half_lives, probe
        self.score, self.probed, self.scores = score, probed, scores
        self.on_leader, self.probes = on_leader, probes
        self.leader: TowerConfig | None = None
        self.runs: dict[str, Training] = {}
        self.waiting: list[str] = []
        self.started: dict[str, Child] = {}
        self.told = False

    def begin(self, leader: TowerConfig) -> None:
        """The first stage's leader is ``leader``: start probing the second stage's runs."""
        self.leader = replace(leader, popularity_prior=0.0)
        self.runs = {tried_key(leader.temperature, h): Training(
            replace(self.leader, recency_half_life_days=h), self.data, self.progress)
            for h in self.half_lives}  # fmt: skip
        self.waiting = list(self.runs)
        self.poll()

    def poll(self) -> None:
        for name, child in list(self.started.items()):
            if child.proc.poll() is None:
                return  # one child at a time: this one still trains
            run = self.runs[name]
            if not self.probes.take(child, run):  # failed: train it here
                while not run.done and len(run.history) < self.probe:
                    run.epoch()
            self.probed[name] = self.scores[name] = self.score(name, run)
            del self.started[name]
        if self.waiting:
            name = self.waiting.pop(0)
            self.started[name] = self.probes.start(self.runs[name], self.probe)
        elif not self.told and self.on_leader is not None and self.leader is not None:
            # Every second-stage run is scored: the one the stage will continue.
            first = tried_key(self.leader.temperature, self.leader.recency_half_life_days)
            named = {**self.runs, first: None}
            best = max(named, key=lambda name: self.probed[name])
            self.on_leader(self.leader if best == first else self.runs[best].cfg)
            self.told = True

    def stage(self, best: Training) -> tuple[dict[str, Training], dict[str, Child]]:
        """The second stage's runs and those still training in a child, when the first
        stage's best run (``best``) is the leader they were started for; else nothing
        (their children stopped), and the stage starts afresh."""
        if self.leader is not None and best.cfg == self.leader:
            return dict(self.runs), dict(self.started)
        for child in self.started.values():
            child.stop()
        return {}, {}


def tune(
    cfg: TowerConfig, data: TowerData, temperatures: tuple[float, ...] = TEMPERATURES,
    progress: bool = True, half_lives: tuple[float, ...] = HALF_LIVES, prior: bool = True,
    probe_epochs: int = PROBE_EPOCHS, on_leader: OnLeader | None = None,
    parallel: bool = False,
) -> tuple[TrainResult, dict[str, float], dict[str, float]]:  # fmt: skip
    """One run per temperature, then, at the best one, one per other recency half-life;
    each run scored at its own popularity prior chosen on validation (``prior``,
    :func:`choose_prior`), the best on validation recall@`select_k` kept. Each stage is a
    successive halving (:data:`PROBE_EPOCHS`): a run cut after ``probe_epochs`` is scored
    as it stands there. Returns (the best run, each run's validation recall at its prior by
    :func:`tried_key`, the best run's validation recall by prior setting). ``on_leader``
    is given the config of the run the tuning will train on to its early stop as soon as it
    is known (the run most likely chosen: ``towers.parallel`` starts the refit of it then):
    before the last stage's leader goes on, or with ``parallel`` as soon as the second
    stage is probed (:class:`_NextStage`). It may hear of the same run twice, and of another
    if the first stage's best turns out to be another run. With ``parallel`` and two cores
    or more, probes train in a child process beside this one (:func:`_halving`,
    :class:`_NextStage`: the same results)."""
    with Probes(data) if beside(parallel) else nullcontext() as probes:
        return _tune(cfg, data, temperatures, progress, half_lives, prior, probe_epochs,
                     on_leader, probes)  # fmt: skip


def _tune(
    cfg: TowerConfig, data: TowerData, temperatures: tuple[float, ...], progress: bool,
    half_lives: tuple[float, ...], prior: bool, probe_epochs: int, on_leader: OnLeader | None,
    probes: Probes | None,
) -> tuple[TrainResult, dict[str, float], dict[str, float]]:  # fmt: skip
    assert data.val is not None, "tuning needs a validation window"
    val = data.val
    results: dict[str, TrainResult] = {}
    grids: dict[str, dict[str, float]] = {}

    def score(name: str, run: Training) -> float:
        # A run that may go on is scored on a copy of its best weights (its prior set there).
        result = run.result(copy=not run.done)
        if prior:
            results[name], grids[name] = choose_prior(result, val)
        else:
            results[name], grids[name] = result, {"none": run.best}
        return max(grids[name].values())

    probed: dict[str, float] = {}
    scores: dict[str, float] = {}
    first = half_lives[0] if half_lives else cfg.recency_half_life_days
    runs = {tried_key(t, first): Training(replace(cfg, temperature=t, recency_half_life_days=first),
                                          data, progress) for t in temperatures}  # fmt: skip
    more_lives = half_lives[1:] if half_lives else ()
    ahead = _NextStage(data, progress, more_lives, probe_epochs, score, probed, scores,
                       on_leader, probes) if probes is not None and more_lives else None  # fmt: skip
    if ahead is None:
        best = _halving(runs, probe_epochs, score, probed, scores,
                        None if more_lives else on_leader, probes)  # fmt: skip
    else:
        best = _halving(runs, probe_epochs, score, probed, scores, ahead.begin, probes,
                        between=ahead.poll)  # fmt: skip
    chosen = replace(runs[best].cfg, popularity_prior=0.0)
    more, started = ahead.stage(runs[best]) if ahead is not None else ({}, {})
    if not more:  # the next stage's runs as the last stage's best asks
        more = {tried_key(chosen.temperature, h): Training(
            replace(chosen, recency_half_life_days=h), data, progress) for h in more_lives}  # fmt: skip
    if more:
        more[best] = runs[best]  # the leader so far competes on its probe-epoch score
        best = _halving(more, probe_epochs, score, probed, scores, on_leader, probes, started)
    k = f"recall@{cfg.select_k}"
    log.info("%s: validation %s at each run's prior %s -> %s", cfg.loss, k, scores, best)
    return results[best], scores, grids[best]
