"""The pipeline as one Dagster ``Definitions``: assets, checks, jobs, schedules, a sensor.

    dagster dev -m orchestration.definitions          # the UI on the whole graph
    dagster job execute -m orchestration.definitions -j full_pipeline

Jobs: ``full_pipeline`` (everything), ``retrain`` (training set → promotion, on the current
dataset and features), ``feature_refresh`` (new batches → dataset → features → online
materialization → candidates of the current version), ``backtest`` (the rolling backtest,
``orchestration.assets.backtest``; not part of ``full_pipeline``). Schedules (cron from
``RECSYS_RETRAIN_CRON`` / ``RECSYS_REFRESH_CRON``, defaults nightly and hourly) run
``retrain`` and ``feature_refresh``; the ``incoming_batches`` sensor runs
``feature_refresh`` when new files land in ``<data>/incoming`` (and skips while another
run holds the data folder's writer lock).
"""

import os

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    sensor,
)

from orchestration.assets import ASSETS
from orchestration.assets.backtest import backtest
from orchestration.resources import PipelineSettings, default_resources

# Every asset of the pipeline; the backtest (minutes of retraining per cut) has its own job.
full_pipeline = define_asset_job(
    "full_pipeline", AssetSelection.assets(*ASSETS), description="Every asset, ingest to promotion."
)
retrain = define_asset_job(
    "retrain",
    AssetSelection.assets("training_set").downstream(),
    description="A new model version from the current features: training set, training, "
    "embeddings, candidates, online materialization, promotion.",
)
feature_refresh = define_asset_job(
    "feature_refresh",
    AssetSelection.assets(
        "incoming_batch",
        "dataset",
        "features",
        "feast_registry",
        "online_features",
        "user_candidates",
    ),  # fmt: skip
    description="New data in, no training: validated batches → dataset → features → online "
    "materialization → candidates of the current version.",
)

backtest_job = define_asset_job(
    "backtest",
    AssetSelection.assets(backtest),
    description="Rolling-origin backtest (evaluation.backtest): the pipeline and every model as of "
    "each cut, scored on the window after it; writes only its own output folder.",
)

retrain_schedule = ScheduleDefinition(
    name="nightly_retrain",
    job=retrain,
    cron_schedule=os.environ.get("RECSYS_RETRAIN_CRON", "0 3 * * *"),
    default_status=DefaultScheduleStatus.STOPPED,
    description="Retrain (a new version only if data or config changed), nightly by default.",
)
refresh_schedule = ScheduleDefinition(
    name="hourly_feature_refresh",
    job=feature_refresh,
    cron_schedule=os.environ.get("RECSYS_REFRESH_CRON", "0 * * * *"),
    default_status=DefaultScheduleStatus.STOPPED,
)


@sensor(
    job=feature_refresh,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="New interaction files in <data>/incoming → feature_refresh.",
)
def incoming_batches(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    from recsys.incoming import batch_key, pending
    from recsys.lock import describe, holder

    settings = PipelineSettings().settings()
    files = pending(settings.paths)
    if not files:
        return SkipReason("no new files in the incoming folder")
    writer = holder(settings.data_dir)
    if writer is not None:
        # The files stay in incoming/: the next tick after that run requests a run for them.
        return SkipReason(f"the data folder is being written by {describe(writer)}")
    # One run per set of files as they are now: a file still being written changes the key.
    return RunRequest(run_key=batch_key(files), tags={"batch_files": str(len(files))})


defs = Definitions(
    assets=[*ASSETS, backtest],
    jobs=[full_pipeline, retrain, feature_refresh, backtest_job],
    schedules=[retrain_schedule, refresh_schedule],
    sensors=[incoming_batches],
    resources=default_resources(),
    # Every step of a run in one process: the run holds the data folder's writer lock
    # (recsys.lock, taken by the `pipeline` resource) from its first step to its last, and a
    # 2-core machine gains nothing from step processes (training uses every core it has).
    executor=in_process_executor,
)
