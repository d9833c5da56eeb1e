"""Ingest: any dataset source → a validated canonical dataset in ``<data>/dataset``.

Sources: ``movielens-100k`` (fetched once, checksum-verified, cached in ``<data>/raw``),
``synthetic`` (generated from the settings' size and seed), or a folder path — either a
canonical folder (users / items / interactions parquet) or the original GroupLens
``ml-100k/`` folder (u.data, u.user, u.item). The source is converted and validated in a
staging folder and published with one atomic switch: invalid input raises an error that
names the file, the column and example rows, and leaves the data folder as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

from recsys.audit import AuditFailed, audit_dataset, publish_audited
from recsys.io import atomic_write_json, staging_dir
from recsys.settings import Settings
from recsys.validation.folder import DatasetSummary, normalize_dataset

log = logging.getLogger(__name__)
MOVIELENS = "movielens-100k"
SYNTHETIC = "synthetic"


def describe_source(settings: Settings) -> str:
    """A stable description of the configured source (recorded in the dataset manifest)."""
    if settings.dataset == SYNTHETIC:
        return f"synthetic(n={settings.synthetic_interactions}, seed={settings.synthetic_seed})"
    if settings.dataset == MOVIELENS:
        return MOVIELENS
    return str(Path(settings.dataset).expanduser().resolve())


def _convert(settings: Settings, stage: Path) -> Path:
    """Bring the configured source into canonical (not yet validated) form; return its folder."""
    from recsys.datasets import movielens

    if settings.dataset == MOVIELENS:
        raw = movielens.fetch_movielens_100k(settings.paths.raw / MOVIELENS)
        movielens.movielens_100k_to_canonical(raw, stage)
        return stage
    if settings.dataset == SYNTHETIC:
        from recsys.datasets.synthetic import generate_synthetic

        generate_synthetic(
            stage, settings.synthetic_interactions, seed=settings.synthetic_seed, progress=True
        )
        return stage
    folder = Path(settings.dataset).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dataset {settings.dataset!r} is neither '{MOVIELENS}', '{SYNTHETIC}' nor a folder"
        )
    if (folder / "u.data").exists():
        movielens.grouplens_to_canonical(folder, stage)
        return stage
    return folder  # a canonical folder: validated and normalised as it is


def ingest(settings: Settings) -> DatasetSummary:
    """Convert, validate and publish the configured dataset as ``<data>/dataset``.

    The converted copy is audited with the dataset's blocking checks
    (`recsys.audit.audit_dataset`) before it is published; a failure raises
    :class:`recsys.audit.AuditFailed` and keeps the rejected copy under ``<data>/rejected/``."""
    paths = settings.paths
    with (
        staging_dir(paths.data_dir, "convert") as converted,
        staging_dir(paths.data_dir, "dataset") as stage,
    ):
        source = _convert(settings, converted)
        summary = normalize_dataset(source, stage)
        atomic_write_json(
            stage / "manifest.json", {"source": describe_source(settings), **vars(summary)}
        )
        audit = publish_audited(stage, paths.dataset, paths.data_dir, audit_dataset)
    if not audit.passed:
        raise AuditFailed(audit)
    log.info("dataset %s: %s", describe_source(settings), summary)
    return summary
