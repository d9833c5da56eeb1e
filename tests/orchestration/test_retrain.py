"""The scheduled retrain (tier 2): after a promoted version, 30 new events arrive and the
whole graph runs again. The quality gate must compare the new version with the current
version's evaluated model re-scored on the new test window, say what it decided, and the
run and the registry must follow it: promoted (better, or not significantly different);
below the best baseline but not significantly worse than the current one, the current one
kept with a warning and the run succeeds; significantly worse than the current one, a
regression, the run fails and the current one stays. Which of these happens depends on the
models trained; on MovieLens-100K the README gives the outcome of this scenario."""

from pathlib import Path

import pandas as pd

from recsys.registry import PROMOTED, REJECTED, RETIRED, ModelRegistry
from tests.orchestration.test_pipeline import failed_checks, run


def test_thirty_new_events_retrain_and_the_gate_says_what_it_kept(tmp_path: Path):
    data = tmp_path / "data"
    first = run(data)
    assert first.success and failed_checks(first) == set()
    reg = ModelRegistry(data / "models")
    before = reg.current()
    assert before is not None and reg.info(before).get("kind") is None
    events = pd.read_parquet(data / "dataset" / "interactions.parquet")
    # 30 new events a second apart after the last one, on known users and items.
    batch = events.sort_values("event_timestamp").tail(30).reset_index(drop=True)
    batch["event_timestamp"] = events.event_timestamp.max() + pd.to_timedelta(range(1, 31), "s")
    (data / "incoming").mkdir(exist_ok=True)
    batch.to_parquet(data / "incoming" / "thirty.parquet")

    # The first run serves a two-tower whatever the baselines do (FAST: the baseline rule
    # off); the retrain is judged by the whole gate, both rules, as a scheduled run would be.
    second = run(data, gate_against_baseline=True)
    (gate,) = [e for e in second.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    verdict, outcome = gate.metadata["verdict"].value, gate.metadata["outcome"].value
    assert f"minus {before}'s on the same window" in verdict
    built = gate.metadata["version"].value if "version" in gate.metadata else None
    built = built or [v for v in reg.versions() if v != before][-1]
    training = pd.read_parquet(data / "training" / "training_set.parquet")
    # The new version holds the refit on every event before its as_of, the 30 included.
    assert reg.info(built)["served"]["rows"] == len(training) == len(events) + 30
    assert failed_checks(second) <= {"quality_gate"}
    if gate.passed:
        assert second.success and outcome.startswith("promoted: ") and outcome in verdict
        assert reg.current() == built and reg.state(before) == RETIRED
        return
    assert reg.current() == before and reg.state(before) == PROMOTED
    assert reg.state(built) == REJECTED
    if gate.severity.value == "WARN":  # kept: nothing regressed, the run goes on
        assert second.success and f"{before} kept, not significantly different" in outcome
    else:  # a regression against what is served: the run fails, the current one stays
        assert not second.success
        assert outcome == "rejected: significantly worse than the current version"
