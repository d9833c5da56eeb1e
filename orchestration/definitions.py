"""The pipeline as one Dagster ``Definitions``: assets, checks, jobs, schedules, a sensor.

    dagster dev -m orchestration.definitions          # the UI on the whole graph
    dagster job execute -m orchestration.definitions -j full_pipeline

Jobs: ``full_pipeline`` (everything), ``retrain`` (training set → promotion, on the current
dataset and features), ``feature_refresh`` (new batches → dataset → features → online
materialization → candidates of the current version), ``catalogue_refresh`` (the same, then a
version derived from the current one for new or changed items, promoted), ``backtest`` (the rolling backtest,
``orchestration.assets.backtest``; not part of ``full_pipeline``). Schedules (cron from
``RECSYS_RETRAIN_CRON`` / ``RECSYS_REFRESH_CRON`` / ``RECSYS_CATALOGUE_CRON``, defaults
nightly, hourly, every 15 minutes; all stopped) run ``retrain``, ``feature_refresh`` and
``catalogue_refresh``; the ``incoming_batches`` sensor runs ``catalogue_refresh`` when user or
item files land in ``<data>/incoming/{users,items}``, else ``feature_refresh`` for
interaction files in ``<data>/incoming`` (and skips while another run holds the data
folder's writer lock).
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

# The catalogue refresh's steps, in order (also the CLI's progress lines).
CATALOGUE_REFRESH_ASSETS = (
    "incoming_batch", "dataset", "features", "feast_registry", "online_features",
    "catalogue_version", "item_embeddings", "user_candidates", "promoted_model",
)  # fmt: skip
catalogue_refresh = define_asset_job(
    "catalogue_refresh",
    AssetSelection.assets(*CATALOGUE_REFRESH_ASSETS),
    description="New or changed items served without training: a version derived from the "
    "current one (same weights) whose item table embeds only them, its candidates, its "
    "promotion (evaluation.catalogue); nothing when the catalogue did not change.",
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
catalogue_schedule = ScheduleDefinition(
    name="catalogue_refresh_schedule",
    job=catalogue_refresh,
    cron_schedule=os.environ.get("RECSYS_CATALOGUE_CRON", "*/15 * * * *"),
    default_status=DefaultScheduleStatus.STOPPED,
    description="Catalogue refresh (a derived version only if items were added or changed).",
)


@sensor(
    jobs=[feature_refresh, catalogue_refresh],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="New files in <data>/incoming → catalogue_refresh when users or items are "
    "among them, else (interactions only) feature_refresh.",
)
def incoming_batches(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    from recsys.incoming import batch_key, pending, table_of
    from recsys.lock import describe, holder

    settings = PipelineSettings().settings()
    files = pending(settings.paths)
    entities = [f for f in files if table_of(f) != "interactions"]
    if not files:
        return SkipReason("no new files in the incoming folder")
    writer = holder(settings.data_dir)
    if writer is not None:
        # The files stay in incoming/: the next tick after that run requests a run for them.
        return SkipReason(f"the data folder is being written by {describe(writer)}")
    # One run per set of files as they are now: a file still being written changes the key.
    job = catalogue_refresh if entities else feature_refresh
    return RunRequest(run_key=batch_key(files), job_name=job.name,
                      tags={"batch_files": str(len(files))})  # fmt: skip


defs = Definitions(
    assets=[*ASSETS, backtest],
    jobs=[full_pipeline, retrain, feature_refresh, catalogue_refresh, backtest_job],
    schedules=[retrain_schedule, refresh_schedule, catalogue_schedule],
    sensors=[incoming_batches],
    resources=default_resources(),
    # Every step of a run in one process: the run holds the data folder's writer lock
    # (recsys.lock, taken by the `pipeline` resource) from its first step to its last, and a
    # 2-core machine gains nothing from step processes (training uses every core it has).
    executor=in_process_executor,
)
