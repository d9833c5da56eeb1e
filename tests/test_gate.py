"""The quality gate (tier 1): the best-baseline rule (point estimate, or the paired
bootstrap when per-user scores are given), the paired bootstrap over users, and the three
outcomes against the current version scored on the same window."""

import numpy as np
import pytest

from recsys.gate import paired_bootstrap, quality_gate


def _metrics(ours: float, popularity: float, **others: float) -> dict:
    names = {"EASE": "EASE", "recent": "popularity (recent)", "segment": "segment popularity",
             "knn": "ItemKNN"}  # fmt: skip
    models = {"two-tower (softmax)": ours, "popularity": popularity,
              **{names[k]: v for k, v in others.items()}}  # fmt: skip
    return {"models": {name: {"all": {"recall@20": value}} for name, value in models.items()}}


def test_without_per_user_scores_the_candidate_must_beat_the_best_baseline():
    decision = quality_gate(_metrics(0.30, 0.20))
    assert decision.passed
    assert decision.verdict == "passed: recall@20 0.3000 vs best baseline popularity 0.2000"
    decision = quality_gate(_metrics(0.20, 0.20))
    assert not decision.passed and "not above popularity's 0.2000" in decision.verdict
    # The best baseline is whichever scores highest, and the verdict names it.
    decision = quality_gate(_metrics(0.30, 0.20, EASE=0.31, recent=0.25, knn=0.29))
    assert not decision.passed and decision.outcome == "rejected: not above EASE"
    assert decision.metadata()["best_baseline"] == "EASE"
    decision = quality_gate(_metrics(0.30, 0.20, segment=0.22, recent=0.29))
    assert decision.passed and "best baseline popularity (recent) 0.2900" in decision.verdict
    # Beating the best baseline is required even when not worse than the current version.
    same = np.full(50, 0.2)
    assert not quality_gate(_metrics(0.20, 0.25), same, same, "v1").passed
    with pytest.raises(ValueError, match="metrics.json of the new version has no number "
                       "at models/'two-tower \\(softmax\\)'/all/'recall@20'"):  # fmt: skip
        quality_gate({"models": {"popularity": {"all": {"recall@20": 0.3}}}})
    with pytest.raises(ValueError, match="scores none of the baselines"):
        quality_gate({"models": {"two-tower (softmax)": {"all": {"recall@20": 0.3}}}})


def test_with_per_user_scores_only_significantly_below_the_best_baseline_fails():
    rng = np.random.default_rng(2)
    ease = (rng.random(300) < 0.3).astype(float)  # per-user recall@20 of the best baseline
    popularity = ease * (rng.random(300) < 0.8)
    # A little below EASE on the mean, by noise: not significantly below -> passes rule 1.
    flip = rng.random(300) < 0.04
    close = np.where(flip, 1 - ease, ease)
    close[np.flatnonzero(close > ease)[:3]] = 0  # a touch lower on the mean
    assert close.mean() < ease.mean()
    metrics = _metrics(close.mean(), popularity.mean(), EASE=ease.mean())
    per_user = {"two-tower (softmax)": close, "EASE": ease, "popularity": popularity}
    decision = quality_gate(metrics, per_user=per_user)
    assert decision.passed and decision.outcome == "promoted: not below EASE"
    assert decision.vs_baseline is not None
    assert decision.vs_baseline.low < 0 <= decision.vs_baseline.high
    assert "difference" in decision.verdict and "95% interval" in decision.verdict
    # Clearly below: rejected, naming the baseline and its interval.
    worse = ease * (rng.random(300) < 0.5)
    metrics = _metrics(worse.mean(), popularity.mean(), EASE=ease.mean())
    decision = quality_gate(metrics, per_user={**per_user, "two-tower (softmax)": worse})
    assert not decision.passed and decision.outcome == "rejected: significantly below EASE"
    assert decision.metadata()["baseline_interval_high"] < 0
    # Per-user scores of another baseline only: the point rule decides.
    decision = quality_gate(_metrics(close.mean(), 0.1, EASE=ease.mean()),
                            per_user={"two-tower (softmax)": close, "popularity": popularity})  # fmt: skip
    assert not decision.passed and decision.outcome == "rejected: not above EASE"


def test_the_baseline_rule_off_reports_the_baseline_and_leaves_the_current_version_to_decide():
    rng = np.random.default_rng(3)
    ease = (rng.random(300) < 0.3).astype(float)
    worse = ease * (rng.random(300) < 0.5)  # significantly below EASE
    metrics = _metrics(worse.mean(), 0.1, EASE=ease.mean())
    per_user = {"two-tower (softmax)": worse, "EASE": ease}
    on = quality_gate(metrics, per_user=per_user)
    off = quality_gate(metrics, per_user=per_user, against_baseline=False)
    assert not on.passed and off.passed
    assert off.vs_baseline is not None and off.vs_baseline.high < 0  # still measured
    assert "EASE" in off.verdict and "the baseline rule is off" in off.verdict
    # Against a current version it is significantly worse than, it still fails (rule 2).
    current = np.clip(worse + (rng.random(300) < 0.3), 0, 1)
    decision = quality_gate(metrics, worse, current, "v1", per_user=per_user,
                            against_baseline=False)  # fmt: skip
    assert not decision.passed
    assert decision.outcome == "rejected: significantly worse than the current version"


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(1)
    a = rng.random(400)
    same = paired_bootstrap(a, a)
    assert same.mean == same.low == same.high == 0.0
    shifted = paired_bootstrap(a + 0.05, a)
    assert shifted.low == pytest.approx(0.05) and shifted.high == pytest.approx(0.05)
    noisy = paired_bootstrap(a, rng.random(400), seed=3)
    assert noisy.low < noisy.mean < noisy.high and noisy.users == 400
    assert paired_bootstrap(a, a[::-1], seed=3) == paired_bootstrap(a, a[::-1], seed=3)
    # Pairing matters: a small shift on a noisy base is significant when paired.
    base = rng.random(300)
    assert paired_bootstrap(base + 0.01, base).low > 0
    with pytest.raises(ValueError, match="same window"):
        paired_bootstrap(a, a[:10])
    with pytest.raises(ValueError, match="window is empty"):
        paired_bootstrap(np.empty(0), np.empty(0))


def test_only_a_significantly_worse_candidate_is_rejected():
    rng = np.random.default_rng(0)
    current = (rng.random(200) < 0.3).astype(float)  # per-user recall@20, a noisy window
    metrics = _metrics(0.32, 0.20)
    # Noise around the current version's scores: not significantly different -> promoted.
    flip = rng.random(200) < 0.05
    tie = np.where(flip, 1 - current, current)
    decision = quality_gate(metrics, tie, current, "v1")
    assert decision.passed and decision.outcome.startswith("promoted: not significantly")
    assert (
        decision.vs_current is not None and decision.vs_current.low <= 0 <= decision.vs_current.high
    )
    assert "v1's on the same window" in decision.verdict and "95% interval" in decision.verdict
    better = np.maximum(current, rng.random(200) < 0.3)
    decision = quality_gate(metrics, better, current, "v1")
    assert decision.passed and decision.outcome.startswith("promoted: significantly better")
    worse = current * (rng.random(200) < 0.5)
    decision = quality_gate(metrics, worse, current, "v1")
    assert not decision.passed and decision.outcome.startswith("rejected: significantly worse")
    assert decision.metadata()["interval_high"] < 0


def test_below_the_best_baseline_but_not_worse_than_the_current_keeps_the_current():
    rng = np.random.default_rng(4)
    current = (rng.random(200) < 0.3).astype(float)
    flip = rng.random(200) < 0.05
    tie = np.where(flip, 1 - current, current)
    metrics = _metrics(tie.mean(), 0.2, recent=tie.mean() + 0.05)
    decision = quality_gate(metrics, tie, current, "v1")
    assert not decision.passed and decision.keeps_current
    assert decision.outcome == ("rejected: not above popularity (recent); v1 kept, not "
                                "significantly different from it")  # fmt: skip
    assert decision.metadata()["keeps_current"] is True
    # Significantly worse than the current version as well: a regression, not kept quietly.
    worse = current * (rng.random(200) < 0.5)
    decision = quality_gate(_metrics(worse.mean(), 0.2, recent=0.5), worse, current, "v1")
    assert not decision.passed and not decision.keeps_current
    assert decision.outcome == "rejected: significantly worse than the current version"
    # Nothing current: rejected, and nothing kept (a fallback is built instead).
    assert not quality_gate(metrics).keeps_current
