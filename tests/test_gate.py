"""The quality gate (tier 1): the popularity rule, the paired bootstrap over users, and
the three outcomes against the current version scored on the same window."""

import numpy as np
import pytest

from recsys.gate import paired_bootstrap, quality_gate


def _metrics(ours: float, popularity: float) -> dict:
    return {"models": {"two-tower (softmax)": {"all": {"recall@20": ours}},
                       "popularity": {"all": {"recall@20": popularity}}}}  # fmt: skip


def test_the_candidate_must_beat_popularity():
    decision = quality_gate(_metrics(0.30, 0.20))
    assert decision.passed and decision.verdict == "passed: recall@20 0.3000 vs popularity 0.2000"
    decision = quality_gate(_metrics(0.20, 0.20))
    assert not decision.passed and "not above popularity's 0.2000" in decision.verdict
    # Beating popularity is required even when it is not worse than the current version.
    same = np.full(50, 0.2)
    assert not quality_gate(_metrics(0.20, 0.25), same, same, "v1").passed
    with pytest.raises(ValueError, match="metrics.json of the new version has no number "
                       "at models/'popularity'/all/'recall@20'"):  # fmt: skip
        quality_gate({"models": {"two-tower (softmax)": {"all": {"recall@20": 0.3}}}})


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
    assert decision.vs_current is not None and decision.vs_current.low <= 0 <= decision.vs_current.high
    assert "v1's on the same window" in decision.verdict and "95% interval" in decision.verdict
    better = np.maximum(current, rng.random(200) < 0.3)
    decision = quality_gate(metrics, better, current, "v1")
    assert decision.passed and decision.outcome.startswith("promoted: significantly better")
    worse = current * (rng.random(200) < 0.5)
    decision = quality_gate(metrics, worse, current, "v1")
    assert not decision.passed and decision.outcome.startswith("rejected: significantly worse")
    assert decision.metadata()["interval_high"] < 0
