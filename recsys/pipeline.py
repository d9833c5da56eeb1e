"""The foundation pipeline as one function: ingest → features → feast apply → training set →
online materialization. The Dagster assets run the same steps one by one.

The dataset is ingested from its source only the first time (or when the source changed);
after that, new batches in ``incoming/`` are staged and appended as the pipeline's
``incoming_batch`` and ``dataset`` assets do, so a build never drops appended events. The
build holds the data folder's writer lock (`recsys.lock`) from start to end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from recsys.features.build import FeatureManifest, build_features
from recsys.settings import Settings
from recsys.training_set import TrainingSetSummary, build_training_set
from recsys.validation.folder import DatasetSummary, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    dataset: DatasetSummary
    features: FeatureManifest
    training_set: TrainingSetSummary
    seconds: dict[str, float]


def build(
    settings: Settings, materialize_online: bool = True, wait_seconds: float = 0.0
) -> BuildResult:
    from recsys.lock import writer_lock

    with writer_lock(settings.data_dir, owner="recsys build", wait_seconds=wait_seconds):
        return _build(settings, materialize_online)


def _build(settings: Settings, materialize_online: bool) -> BuildResult:
    from recsys import incoming
    from recsys import store as feast_store
    from recsys.audit import AuditFailed
    from recsys.dataset import append_accepted, ensure_dataset

    seconds: dict[str, float] = {}

    def step(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 2)
        log.info("%-14s done in %.2f s", name, seconds[name])

    t = time.perf_counter()
    ensure_dataset(settings)
    staged = incoming.stage(settings)
    if staged is not None and staged.status == "rejected":
        log.warning(
            "batch %s rejected: see %s", staged.batch_id, settings.paths.incoming / "rejected"
        )
    appended = append_accepted(settings)
    if appended.rejected and appended.audit is not None:
        raise AuditFailed(appended.audit)
    dataset = summarize(settings.paths.dataset)
    step("ingest", t)
    t = time.perf_counter()
    paths = settings.paths
    features = build_features(
        paths.dataset,
        paths.features,
        paths.data_dir,
        as_of=settings.as_of,
        recent_items=settings.recent_items,
        memory_limit=settings.duckdb_memory_limit,
        settings=settings,
    )
    step("features", t)
    t = time.perf_counter()
    store = feast_store.apply(paths, feast_store.feature_store_for(settings))
    step("feast_apply", t)
    t = time.perf_counter()
    training = build_training_set(settings, store)
    step("training_set", t)
    if materialize_online:
        t = time.perf_counter()
        feast_store.materialize(paths, end=features.as_of, store=store)
        step("materialize", t)
    return BuildResult(dataset, features, training, seconds)
