"""The quality gate (``recsys.gate``) of a new version on its test window, the latest: the
current two-tower version's evaluated checkpoint re-scored on that window
(``towers.rescore``, whose docstring says which checkpoint and why), so that both are
compared user by user. No Dagster here: ``python -c`` or a notebook can call it on any data
folder."""

from __future__ import annotations

from typing import Any

from towers.rescore import evaluated_checkpoint, per_user_scores, read_per_user


def not_rescored(reg: Any, current: str | None, source: Any) -> str | None:
    """Why the current version cannot be re-scored on ``source``'s test window (None: it
    can); ``source`` is read only when the current version is a two-tower."""
    import pandas as pd

    if current is None:
        return "nothing is current"
    if not evaluated_checkpoint(reg.path(current)).exists():
        return f"{current} is a fallback (a baseline, rule 1)"
    start = source().windows["test"][0].start
    last = reg.info(current).get("evaluated", {}).get("last_event")
    if last is not None and pd.Timestamp(last) >= pd.Timestamp(start):
        return (f"{current}'s evaluated model was trained on events up to {last}, inside "
                f"this window (from {start}): a comparison would leak")  # fmt: skip
    return None


def gate_on_one_window(
    settings: Any, reg: Any, candidate: str, current: str | None, metrics: dict[str, Any],
    resamples: int = 1000, against_baseline: bool = True,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The quality gate of ``candidate`` (a version of ``reg``, a ``recsys.registry.
    ModelRegistry``) on its test window, the latest: against the best baseline (per-user
    scores from the candidate's folder), and, when a two-tower version is current, against
    that version's evaluated checkpoint scored again on the window, user by user
    (``recsys.gate.quality_gate``). Returns (the decision, metadata: both versions'
    recall@20 on the window, and the current one's as stored when it was built).
    ``against_baseline``: rule 1 on or off (``quality_gate``)."""
    from recsys.gate import METRIC, MODEL, quality_gate
    from towers.data import load_source

    per_user = read_per_user(reg.path(candidate))
    loaded: list[Any] = []  # the test window's source, read once if needed

    def source() -> Any:
        if not loaded:
            loaded.append(load_source(settings, with_test=True))
        return loaded[0]

    why = not_rescored(reg, current, source)
    if why is not None or current is None:
        return quality_gate(metrics, per_user=per_user, against_baseline=against_baseline), {
            "current": current or "none", "current_not_rescored": why}  # fmt: skip
    ours = per_user_scores(evaluated_checkpoint(reg.path(candidate)), source())[METRIC]
    theirs = per_user_scores(evaluated_checkpoint(reg.path(current)), source())[METRIC]
    stored = reg.metrics(current).get("models", {}).get(MODEL, {})
    judged = {
        "current": current,
        f"candidate_{METRIC}_on_window": round(float(ours.mean()), 4),
        f"current_{METRIC}_on_window": round(float(theirs.mean()), 4),
        f"current_{METRIC}_as_stored": stored.get("all", {}).get(METRIC),
    }
    decision = quality_gate(metrics, ours, theirs, current, resamples, per_user=per_user,
                            against_baseline=against_baseline)  # fmt: skip
    return decision, judged
