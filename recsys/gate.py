"""The quality gate between training and promotion: a new version's test recall@20 (over all
users, from its metrics.json: towers.compare) must beat popularity's and be no worse than
the current version's beyond a tolerance. Failing it moves the version to ``rejected``
(recsys.registry); passing it to ``gated``."""

from __future__ import annotations

from typing import Any

MODEL = "two-tower (softmax)"
BASELINE = "popularity"
METRIC = "recall@20"


def recall_of(metrics: dict[str, Any], model: str, whose: str) -> float:
    """``metrics["models"][model]["all"][METRIC]``; a clear error naming what is missing."""
    try:
        return float(metrics["models"][model]["all"][METRIC])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"metrics.json of {whose} has no number at models/{model!r}/all/"
                         f"{METRIC!r} ({exc!r}); retrain or rebuild that version") from exc  # fmt: skip


def quality_gate(
    metrics: dict[str, Any], current: dict[str, Any] | None, tolerance: float
) -> tuple[bool, str]:
    """(passed, verdict): above popularity, and at most ``tolerance`` below ``current`` (the
    current version's metrics; None when there is none, or it is the version judged)."""
    ours = recall_of(metrics, MODEL, "the new version")
    popularity = recall_of(metrics, BASELINE, "the new version")
    reasons = []
    if not ours > popularity:
        reasons.append(f"{METRIC} {ours:.4f} is not above popularity's {popularity:.4f}")
    if current is not None:
        theirs = recall_of(current, MODEL, "the current version")
        if ours < theirs - tolerance:
            reasons.append(f"{METRIC} {ours:.4f} is below the current version's {theirs:.4f} "
                           f"by more than {tolerance}")  # fmt: skip
    ok = not reasons
    return ok, ("passed: " if ok else "failed: ") + (
        "; ".join(reasons) or f"{METRIC} {ours:.4f} vs popularity {popularity:.4f}"
    )
