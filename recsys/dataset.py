"""The published dataset's life: the first ingest of the source, then the accepted batches
appended to it, each new version audited before it is published.

* `ensure_dataset` ingests the configured source only when there is no dataset yet, or the
  source changed; an existing dataset with batches appended is kept as it is.
* `append_accepted` writes a new dataset version in staging (the published interactions plus
  the accepted batches' events that it does not hold yet), audits it with the dataset's
  blocking checks (`recsys.audit.audit_dataset`), and publishes it in one atomic switch
  together with its manifest, which records every appended batch and file hash. Only then are
  the batches moved from ``incoming/accepted/`` to ``processed/``: a run killed in between
  finds its batches in the manifest next time and just moves them. A new version that fails
  its audit is not published: it is kept under ``<data>/rejected/`` and its batches are moved
  to ``incoming/rejected/<batch>/`` with the report, so later runs are not blocked by them.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from recsys.audit import Audit, audit_dataset, publish_audited, read_audit
from recsys.incoming import accepted_records, event_key
from recsys.io import atomic_write_json, read_json, staging_dir
from recsys.settings import Paths, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppendResult:
    appended: list[str] = field(default_factory=list)  # batch ids in the published dataset
    new_events: int = 0
    rejected: list[str] = field(default_factory=list)  # batch ids whose dataset failed
    audit: Audit | None = None  # the audit of the new version, when one was written


def ensure_dataset(settings: Settings) -> bool:
    """Ingest the configured source when there is no dataset or the source changed; returns
    whether it ingested. Appended batches survive runs on the same source."""
    from recsys.ingest import describe_source, ingest

    manifest = settings.paths.dataset / "manifest.json"
    if manifest.exists() and read_json(manifest).get("source") == describe_source(settings):
        return False
    ingest(settings)
    return True


def published_audit(paths: Paths) -> Audit:
    """The audit the published dataset passed (recomputed for a dataset published before
    audits were recorded)."""
    return read_audit(paths.dataset) or audit_dataset(paths.dataset)


def append_accepted(settings: Settings) -> AppendResult:
    """Publish a dataset version with every accepted batch's new events (see module doc)."""
    from recsys.schema import TABLES
    from recsys.sql import connect, parquet, string
    from recsys.validation.folder import normalize_dataset

    paths = settings.paths
    records = accepted_records(paths)
    if not records:
        return AppendResult()
    manifest = read_json(paths.dataset / "manifest.json")
    done = set(manifest.get("batches", []))
    landed = [r for r in records if r["batch"] in done]  # published, not yet moved: a crash
    _finish(paths, landed)
    records = [r for r in records if r["batch"] not in done]
    if not records:
        return AppendResult(appended=[r["batch"] for r in landed])
    batches = [paths.incoming / "accepted" / f"{r['batch']}.parquet" for r in records]
    with (
        staging_dir(paths.data_dir, "append") as merged,
        staging_dir(paths.data_dir, "dataset") as stage,
    ):
        con = connect(settings.duckdb_memory_limit)
        for name in TABLES:
            if name != "interactions":
                shutil.copy(paths.dataset / f"{name}.parquet", merged / f"{name}.parquet")
        key = ", ".join(event_key(paths))
        scans = " UNION ALL ".join(f"SELECT * FROM read_parquet({string(str(b))})" for b in batches)
        # Belt and braces: events the dataset already holds are never appended twice, even if
        # a batch was staged against an older dataset.
        new = f"SELECT * FROM ({scans}) QUALIFY row_number() OVER (PARTITION BY {key}) = 1"
        existing = parquet(paths.dataset, "interactions")
        con.execute(
            f"COPY (SELECT * FROM {existing} UNION ALL "
            f"SELECT n.* FROM ({new}) n ANTI JOIN {existing} e USING ({key})) "
            f"TO {string(str(merged / 'interactions.parquet'))} (FORMAT parquet)"
        )
        summary = normalize_dataset(merged, stage)  # the canonical schema checks again
        ids = [r["batch"] for r in records]
        files = {f["sha256"]: r["batch"] for r in records for f in r["files"]}
        # The casts applied to the source stay recorded (the batches' are in their reports).
        counts = {k: v for k, v in vars(summary).items() if k != "casts"}
        atomic_write_json(stage / "manifest.json", {
            **manifest, **counts,
            "batches": [*manifest.get("batches", []), *ids],
            "batch_files": {**manifest.get("batch_files", {}), **files},
        })  # fmt: skip
        added = summary.interactions - int(manifest.get("interactions", 0))
        audit = publish_audited(stage, paths.dataset, paths.data_dir, audit_dataset)
    if not audit.passed:
        _reject(paths, records, audit)
        return AppendResult(rejected=ids, audit=audit)
    _finish(paths, records)
    log.info("appended batches %s: %d new events; %s", ids, added, summary)
    return AppendResult([*(r["batch"] for r in landed), *ids], added, [], audit)


def _finish(paths: Paths, records: list[dict[str, Any]]) -> None:
    """Move appended batches from accepted/ to processed/<batch>/ (record last)."""
    for record in records:
        batch = record["batch"]
        accepted = paths.incoming / "accepted" / f"{batch}.parquet"
        folder = paths.incoming / "processed" / batch
        folder.mkdir(parents=True, exist_ok=True)
        if accepted.exists():
            os.replace(accepted, folder / "normalised.parquet")
        os.replace(accepted.with_suffix(".json"), folder / "accepted.json")


def _reject(paths: Paths, records: list[dict[str, Any]], audit: Audit) -> None:
    """Batches whose dataset failed its audit: moved with the report to incoming/rejected/,
    so that the next run starts from the published dataset, unblocked."""
    for record in records:
        batch = record["batch"]
        folder = paths.incoming / "rejected" / batch
        processed = paths.incoming / "processed" / batch  # the original files, from `stage`
        folder.parent.mkdir(parents=True, exist_ok=True)
        if processed.exists() and not folder.exists():
            os.rename(processed, folder)
        folder.mkdir(parents=True, exist_ok=True)
        accepted = paths.incoming / "accepted" / f"{batch}.parquet"
        atomic_write_json(folder / "dataset_report.json", {
            "status": "rejected: the dataset with this batch failed its checks",
            "failed": audit.failed, "dataset_kept_at": audit.kept_at, "details": audit.details,
        })  # fmt: skip
        os.replace(accepted, folder / "normalised.parquet")
        os.replace(accepted.with_suffix(".json"), folder / "accepted.json")
        log.warning("batch %s rejected with the dataset (%s); moved to %s", batch,
                    ", ".join(audit.failed), folder)  # fmt: skip
