"""The cluster profile's Dagster instance (orchestration.instance): a pipeline run records
its run and its asset materializations in Postgres, not in files under DAGSTER_HOME, and a
second instance built from another instance folder (another host's DAGSTER_HOME) reads them
back."""

from pathlib import Path

import pytest
import sqlalchemy
from dagster import DagsterEventType, DagsterInstance, materialize

from orchestration.assets import ASSETS
from orchestration.instance import POSTGRES_URL_VARIABLE, dagster_home, dagster_postgres_url
from orchestration.resources import PipelineSettings, resources_for

pytestmark = pytest.mark.cluster

SLICE = ["incoming_batch", "dataset", "features"]  # seconds on 2,000 interactions


def materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=100
    ).records
    return {r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records}


def test_a_run_lands_in_postgres_and_another_instance_sees_it(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
    from dagster_postgres.schedule_storage import PostgresScheduleStorage

    monkeypatch.setenv("RECSYS_PROFILE", "cluster")
    monkeypatch.setenv("RECSYS_POSTGRES_URL", postgres_url)
    monkeypatch.setenv(POSTGRES_URL_VARIABLE, dagster_postgres_url(postgres_url))
    settings = PipelineSettings(data_dir=str(tmp_path / "data"), dataset="synthetic",
                                synthetic_interactions=2_000, synthetic_seed=3)  # fmt: skip
    host_a = dagster_home(tmp_path / "host_a", "cluster")
    with DagsterInstance.from_config(str(host_a)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        assert coordinator.get_run_queue_config().max_concurrent_runs == 1
        result = materialize(ASSETS, resources=resources_for(settings), selection=SLICE,
                             instance=instance, tags={"host": "a"})  # fmt: skip
        assert result.success
    run_id = result.run_id
    # Nothing in files: SQLite storage would have written history/ and schedules/ there.
    assert not (host_a / "history").exists() and not (host_a / "schedules").exists()
    engine = sqlalchemy.create_engine(dagster_postgres_url(postgres_url))
    try:
        with engine.connect() as db:
            status = db.execute(sqlalchemy.text("SELECT status FROM runs WHERE run_id = :r"),
                                {"r": run_id}).scalar_one()  # fmt: skip
        assert status == "SUCCESS"
    finally:
        engine.dispose()

    with DagsterInstance.from_config(str(dagster_home(tmp_path / "host_b", "cluster"))) as b:
        run = b.get_run_by_id(run_id)
        assert run is not None and run.is_success and run.tags["host"] == "a"
        assert materialized(b, run_id) == set(SLICE)
        for asset in SLICE:
            latest = b.get_latest_materialization_event(
                next(k for a in ASSETS for k in a.keys if k.to_user_string() == asset)
            )
            assert latest is not None and latest.run_id == run_id
