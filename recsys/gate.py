"""The quality gate between training and promotion, judged on one window.

A new version (the candidate) is scored on the latest test window by ``towers.release``,
through its *evaluated* checkpoint: the model trained without the test window (the served
checkpoint is refit on all data up to ``as_of`` and has seen that window; version.json says
which is which). The current version was scored when it was built, on an *earlier* window:
comparing those two numbers compares windows, not models (on MovieLens-100K one test window
of ~170 users carries about ±0.03 of noise in recall@20). So the current version's
evaluated checkpoint is scored again on the candidate's window (``towers.rescore``, the same
split and evaluation code), and the two are compared user by user with a paired bootstrap.

The rules, in order:

1. **Against the best baseline**: the baseline of :data:`BASELINES` with the highest test
   recall@20 over all users (popularity all-time or recent, EASE, ItemKNN, segment
   popularity; the verdict names it). With per-user scores of both (``towers.release``'s
   ``per_user_test.parquet``), the candidate fails only when it is *significantly* below
   it: the upper end of the 95% bootstrap interval of mean(candidate − baseline) is below
   0. The best of five baselines is picked on the very window it is compared on, so its
   mean is biased upwards (the winner's curse), and a point comparison would be a coin
   toss on a small window. Without per-user scores (an older metrics.json) the point
   estimate must be above the baseline's. A candidate that fails is not served; when no
   two-tower is current, the best baseline is (``recsys.fallback``).
2. **Against the current version** (a two-tower; a fallback current is a baseline of
   rule 1): the 95% bootstrap interval of mean(candidate − current) per user decides.
   Its upper end below 0: significantly worse, **rejected** (the blocking check fails and
   the run is red: a real regression deserves a look; the current version stays). Its
   lower end above 0: significantly better, **promoted**. Otherwise the two are not
   significantly different and the candidate is **promoted**: it is trained on newer
   data, so the newest users and items get embeddings; the verdict says so.

A candidate that fails rule 1 while a two-tower is current is still compared with it: if it
is not significantly worse, the current version is **kept** (``keeps_current``): nothing
regressed, only the new model did not clear the baseline, so the check fails with WARN and
the run goes on (a scheduled retrain on 30 new events must not turn red on noise); if it is
significantly worse, it is a regression (ERROR), as above.

The tolerance is thus the bootstrap interval, not a fixed number. Failing the gate moves
the version to ``rejected`` (recsys.registry); passing it to ``gated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL = "two-tower (softmax)"
# The baselines of rule 1, as towers.release names them in metrics.json; ties go to the first.
BASELINES = ("popularity", "popularity (recent)", "EASE", "ItemKNN", "segment popularity")
METRIC = "recall@20"
RESAMPLES = 1000  # bootstrap resamples of the users; the seed is fixed, so verdicts repeat
LEVEL = 0.95


def recall_of(metrics: dict[str, Any], model: str, whose: str) -> float:
    """``metrics["models"][model]["all"][METRIC]``; a clear error naming what is missing."""
    try:
        return float(metrics["models"][model]["all"][METRIC])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"metrics.json of {whose} has no number at models/{model!r}/all/"
                         f"{METRIC!r} ({exc!r}); retrain or rebuild that version") from exc  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """Mean of a per-user difference and its bootstrap interval."""

    mean: float
    low: float
    high: float
    users: int
    level: float = LEVEL
    resamples: int = RESAMPLES

    def __str__(self) -> str:
        return (f"{self.mean:+.4f}, {self.level:.0%} interval [{self.low:+.4f}, {self.high:+.4f}] "
                f"over {self.users} users")  # fmt: skip


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap interval of mean(a − b), resampling users (pairs stay paired)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two 1-D arrays of one length, got {a.shape} and "
                         f"{b.shape}: were they scored on the same window?")  # fmt: skip
    if len(a) == 0:
        raise ValueError("no users to compare: the window is empty")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {resamples}, {level}")
    diff = a - b  # (U,)
    rng = np.random.default_rng(seed)
    # Resampled in blocks: R x U indices at once would be 400 MB for 50K test users.
    block = max(1, 2_000_000 // len(diff))
    sizes = [(min(block, resamples - lo), len(diff)) for lo in range(0, resamples, block)]
    # (R,) resampled means
    means = np.concatenate([diff[rng.integers(0, len(diff), size=n)].mean(axis=1) for n in sizes])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), len(diff), level, resamples)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided. ``passed`` is the blocking check and means "promote"."""

    passed: bool
    outcome: str  # "promoted: ...", "rejected: ..."
    verdict: str
    vs_current: Interval | None = None
    baseline: str | None = None  # the best baseline of rule 1
    vs_baseline: Interval | None = None
    # Rule 1 failed but the candidate is not significantly worse than the current version:
    # the current one is kept and nothing regressed (the check fails with WARN, not ERROR).
    keeps_current: bool = False

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "outcome": self.outcome,
                               "keeps_current": self.keeps_current}  # fmt: skip
        if self.baseline is not None:
            out["best_baseline"] = self.baseline
        if self.vs_baseline is not None:
            i = self.vs_baseline
            out.update({"difference_vs_best_baseline": round(i.mean, 4),
                        "baseline_interval_low": round(i.low, 4),
                        "baseline_interval_high": round(i.high, 4)})  # fmt: skip
        if self.vs_current is not None:
            i = self.vs_current
            out.update({"difference_vs_current": round(i.mean, 4),
                        "interval_low": round(i.low, 4), "interval_high": round(i.high, 4),
                        "users_compared": i.users, "resamples": i.resamples})  # fmt: skip
        return out


def best_baseline(metrics: dict[str, Any]) -> tuple[str, float]:
    """(name, test recall@20) of the best of :data:`BASELINES` scored in ``metrics``."""
    scored = {name: recall_of(metrics, name, "the new version")
              for name in BASELINES if name in metrics.get("models", {})}  # fmt: skip
    if not scored:
        raise ValueError(f"metrics.json of the new version scores none of the baselines "
                         f"{list(BASELINES)}; retrain or rebuild that version")  # fmt: skip
    name = max(scored, key=lambda n: scored[n])  # ties: the first of BASELINES
    return name, scored[name]


def quality_gate(
    metrics: dict[str, Any],
    candidate: np.ndarray | None = None,
    current: np.ndarray | None = None,
    current_version: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    per_user: dict[str, np.ndarray] | None = None,
    against_baseline: bool = True,
) -> GateDecision:
    """The candidate's ``metrics`` (metrics.json) against the best baseline; with
    ``candidate`` and ``current`` (per-user recall@20 of both versions on the *same* window,
    aligned by user), against the current version as well. ``per_user``: per-user test
    recall@20 by model name (the candidate as :data:`MODEL`), for rule 1's interval (see
    the module docstring). ``against_baseline`` False turns rule 1 off: the comparison with
    the best baseline is still reported, and no longer rejects."""
    ours = recall_of(metrics, MODEL, "the new version")
    name, theirs = best_baseline(metrics)
    base = f"{METRIC} {ours:.4f} vs best baseline {name} {theirs:.4f}"
    per_user = per_user or {}
    vs, below = None, None  # rule 1's interval, and how the candidate failed it
    if MODEL in per_user and name in per_user:
        vs = paired_bootstrap(per_user[MODEL], per_user[name], resamples, seed)
        base = f"{base} (difference {vs})"
        below = f"significantly below {name}" if vs.high < 0 else None
    elif not ours > theirs:
        base, below = f"{METRIC} {ours:.4f} is not above {name}'s {theirs:.4f}", f"not above {name}"
    if not against_baseline:
        base, below = f"{base}; the baseline rule is off", None
    if candidate is None or current is None:
        if below is not None:
            return GateDecision(False, f"rejected: {below}", f"failed: {base}", None, name, vs)
        return GateDecision(True, f"promoted: not below {name}", f"passed: {base}", None, name,
                            vs)  # fmt: skip
    interval = paired_bootstrap(candidate, current, resamples, seed)
    who = current_version or "the current version"
    against = f"{METRIC} minus {who}'s on the same window: {interval}"
    if interval.high < 0:
        return GateDecision(False, "rejected: significantly worse than the current version",
                            f"failed: {base}; {against}; the current version stays", interval,
                            name, vs)  # fmt: skip
    if below is not None:  # no regression: what is served stays, and the run goes on
        outcome = f"rejected: {below}; {who} kept, not significantly different from it"
        return GateDecision(False, outcome, f"failed: {base}; {against}; {outcome}", interval,
                            name, vs, keeps_current=True)  # fmt: skip
    if interval.low > 0:
        outcome = "promoted: significantly better than the current version"
    else:
        outcome = "promoted: not significantly different from the current version (newer data)"
    return GateDecision(True, outcome, f"passed: {base}; {against}; {outcome}", interval, name,
                        vs)  # fmt: skip
