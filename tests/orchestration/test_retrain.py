"""The scheduled retrain (tier 2): after a promoted version, 30 new events arrive and the
whole graph runs again. It must succeed, and the quality gate must say what happened,
against the current version's evaluated model re-scored on the new test window: the new
version promoted (better, or not significantly different), or, when it is below the best
baseline but not significantly worse than the current one, the current one kept (a
warning); never a run failed by noise. The state of the registry must match the verdict."""

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

    second = run(data)
    assert second.success and failed_checks(second) <= {"quality_gate"}
    (gate,) = [e for e in second.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    verdict = gate.metadata["verdict"].value
    assert f"minus {before}'s on the same window" in verdict
    version = second.asset_materializations_for_node("two_tower_model")[0].metadata["version"]
    built = version.value
    training = pd.read_parquet(data / "training" / "training_set.parquet")
    # The new version holds the refit on every event before its as_of, the 30 included.
    assert reg.info(built)["served"]["rows"] == len(training) == len(events) + 30
    if gate.passed:
        assert "promoted: " in verdict
        assert reg.current() == built and reg.state(before) == RETIRED
    else:  # kept: a warning, the current version still served
        assert gate.severity.value == "WARN" and f"{before} kept, not significantly" in verdict
        assert reg.current() == before and reg.state(before) == PROMOTED
        assert reg.state(built) == REJECTED
