"""Dagster resources: the pipeline's settings, Feast, LanceDB and the model registry.

Every path comes from one place, `recsys.settings.Settings` (``RECSYS_*`` environment
variables, or the resource's config in the Dagster UI's launchpad); the other resources
derive theirs from it, so pointing the pipeline at another data folder is one setting.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource, InitResourceContext, ResourceDependency

from recsys.settings import Settings, settings_from


class PipelineSettings(ConfigurableResource):
    """The recsys settings for a run. Empty fields fall back to ``RECSYS_*`` / defaults."""

    data_dir: str | None = None
    dataset: str | None = None
    as_of: str | None = None
    synthetic_interactions: int | None = None
    synthetic_seed: int | None = None
    # Two-tower training: softmax temperatures tried on validation (comma-separated; the two
    # ends of `towers.tuning.TEMPERATURES`, which `python -m towers compare` tries in full:
    # sharp for personal data, flat where the item prior carries the signal), and the most
    # epochs a run may take.
    temperatures: str = "0.05,1.0"
    max_epochs: int = 30
    # Candidates precomputed per user.
    candidates_k: int = 100
    # The quality gate's bootstrap resamples over users (recsys.gate): its tolerance is the
    # 95% interval of the candidate's difference to the current version, not a fixed number.
    gate_resamples: int = 1000
    # Rule 1 of the gate (recsys.gate): a two-tower significantly below the best baseline on
    # its test window is not served (a fallback is, when no two-tower is current). Off, only
    # the comparison with the current version decides, and the baseline comparison is still
    # reported: for a deployment that must serve a two-tower whatever the baselines do (an
    # A/B test of towers), and the serving tests, which test serving one, not its quality.
    gate_against_baseline: bool = True
    # Train a new version even when the data and config have not changed.
    force_retrain: bool = False
    # Model versions kept after a promotion besides the current and the previous one: the
    # newest this many by creation (rejected ones included, for inspection); older versions
    # are deleted with their LanceDB tables (recsys.retention).
    keep_versions: int = 3

    # How long a run waits for another writer of the data folder to finish before it fails
    # with a message naming that writer (recsys.lock): one writer at a time.
    lock_wait_seconds: float = 0.0

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator["PipelineSettings"]:
        """Every run that uses these settings writes the data folder: it holds the folder's
        writer lock from its first step to its last (runs execute in one process)."""
        from recsys.lock import writer_lock

        run = context.dagster_run.run_id if context.dagster_run else "outside a run"
        with writer_lock(self.settings().data_dir, owner=f"dagster run {run}",
                         wait_seconds=self.lock_wait_seconds):  # fmt: skip
            yield self

    def settings(self) -> Settings:
        return settings_from(
            data_dir=self.data_dir,
            dataset=self.dataset,
            as_of=self.as_of,
            synthetic_interactions=self.synthetic_interactions,
            synthetic_seed=self.synthetic_seed,
        )

    def temperature_grid(self) -> tuple[float, ...]:
        return tuple(float(t) for t in self.temperatures.split(",") if t.strip())


class FeastResource(ConfigurableResource):
    """The Feast feature store of the data folder (offline store: recsys' DuckDB store)."""

    pipeline: ResourceDependency[PipelineSettings]

    def store(self) -> Any:
        from recsys.store import feature_store_for

        return feature_store_for(self.pipeline.settings())


class LanceDBResource(ConfigurableResource):
    """The LanceDB folder holding one item table per model version."""

    pipeline: ResourceDependency[PipelineSettings]

    def db_dir(self) -> Any:
        return self.pipeline.settings().paths.lancedb


class ModelRegistryResource(ConfigurableResource):
    """Model versions and the "current" switch (recsys.registry)."""

    pipeline: ResourceDependency[PipelineSettings]

    def registry(self) -> Any:
        from recsys.objectstore import artifact_store
        from recsys.registry import ModelRegistry

        settings = self.pipeline.settings()
        return ModelRegistry(settings.paths.models, store=artifact_store(settings))


def resources_for(pipeline: PipelineSettings) -> dict[str, Any]:
    """The four resources the assets use, all derived from one `PipelineSettings`."""
    return {
        "pipeline": pipeline,
        "feast": FeastResource(pipeline=pipeline),
        "lancedb": LanceDBResource(pipeline=pipeline),
        "registry": ModelRegistryResource(pipeline=pipeline),
    }


def default_resources() -> dict[str, Any]:
    return resources_for(PipelineSettings())
