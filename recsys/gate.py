"""The quality gate between training and promotion, judged on one window.

A new version (the candidate) is scored on the latest test window by ``towers.compare``.
The current version was scored when it was built, on an *earlier* window: comparing those
two numbers compares windows, not models (on MovieLens-100K one test window of ~170 users
carries about ±0.03 of noise in recall@20). So the current version's checkpoint is scored
again on the candidate's window (``towers.rescore``, the same split and evaluation code),
and the two are compared user by user with a paired bootstrap over users.

The rules, in order:

1. **Above popularity**: the candidate's mean recall@20 on the window must be above
   popularity's (point estimate, as the baseline is scored on the same users). A model
   that does not beat a popularity list is not worth serving over one; requiring a
   *significant* win here would reject most models on small windows, and serving then
   falls back to the baseline itself (``recsys.fallback``) anyway.
2. **Against the current version** (a two-tower; a fallback current is the baseline of
   rule 1): the 95% bootstrap interval of mean(candidate − current) per user decides.
   Its upper end below 0: significantly worse, **rejected** (the blocking check fails and
   the run is red: a real regression deserves a look; the current version stays). Its
   lower end above 0: significantly better, **promoted**. Otherwise the two are not
   significantly different and the candidate is **promoted**: it is trained on newer
   data, so the newest users and items get embeddings; the verdict says so.

The tolerance is thus the bootstrap interval, not a fixed number. Failing the gate moves
the version to ``rejected`` (recsys.registry); passing it to ``gated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL = "two-tower (softmax)"
BASELINE = "popularity"
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
    means = np.concatenate([
        diff[rng.integers(0, len(diff), size=(min(block, resamples - lo), len(diff)))].mean(axis=1)
        for lo in range(0, resamples, block)
    ])  # (R,)
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

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "outcome": self.outcome}
        if self.vs_current is not None:
            i = self.vs_current
            out.update({"difference_vs_current": round(i.mean, 4),
                        "interval_low": round(i.low, 4), "interval_high": round(i.high, 4),
                        "users_compared": i.users, "resamples": i.resamples})  # fmt: skip
        return out


def quality_gate(
    metrics: dict[str, Any],
    candidate: np.ndarray | None = None,
    current: np.ndarray | None = None,
    current_version: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> GateDecision:
    """The candidate's ``metrics`` (metrics.json) against popularity; with ``candidate`` and
    ``current`` (per-user recall@20 of both versions on the *same* window, aligned by user),
    against the current version as well (see the module docstring)."""
    ours = recall_of(metrics, MODEL, "the new version")
    popularity = recall_of(metrics, BASELINE, "the new version")
    base = f"{METRIC} {ours:.4f} vs popularity {popularity:.4f}"
    if not ours > popularity:
        why = f"{METRIC} {ours:.4f} is not above popularity's {popularity:.4f}"
        return GateDecision(False, "rejected: not above popularity", f"failed: {why}")
    if candidate is None or current is None:
        return GateDecision(True, "promoted: above popularity", f"passed: {base}")
    interval = paired_bootstrap(candidate, current, resamples, seed)
    name = current_version or "the current version"
    against = f"{METRIC} minus {name}'s on the same window: {interval}"
    if interval.high < 0:
        return GateDecision(False, "rejected: significantly worse than the current version",
                            f"failed: {against}; the current version stays", interval)  # fmt: skip
    if interval.low > 0:
        outcome = "promoted: significantly better than the current version"
    else:
        outcome = "promoted: not significantly different from the current version (newer data)"
    return GateDecision(True, outcome, f"passed: {base}; {against}", interval)
