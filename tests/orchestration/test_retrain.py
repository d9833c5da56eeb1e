"""The scheduled retrain (tier 2): after a promoted version, 30 new events arrive and the
whole graph runs again. It must succeed, and the quality gate must say what happened: the
new version promoted (better, or not significantly different from the current one, whose
evaluated model is re-scored on the new test window), never a run failed by noise."""

from pathlib import Path

import pandas as pd

from recsys.registry import PROMOTED, RETIRED, ModelRegistry
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
    assert second.success and failed_checks(second) == set()
    (gate,) = [e for e in second.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    verdict = gate.metadata["verdict"].value
    assert gate.passed and f"minus {before}'s on the same window" in verdict
    assert "promoted: " in verdict  # significantly better, or not significantly different
    after = reg.current()
    assert after != before and reg.state(after) == PROMOTED and reg.state(before) == RETIRED
    # The new version serves the refit on every event before its as_of, the 30 included.
    training = pd.read_parquet(data / "training" / "training_set.parquet")
    assert reg.info(after)["served"]["rows"] == len(training) == len(events) + 30
