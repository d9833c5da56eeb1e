"""New interaction batches: picked up from ``<data>/incoming``, validated, appended.

A batch is every ``*.parquet`` file in the incoming folder at the time it is picked up (the
canonical interactions columns: user_id, item_id, rating, event_timestamp). Nothing is ever
lost or half-applied:

1. `stage` reads and validates the files together (Great Expectations, `recsys.validation`):
   non-empty, exact columns and types, ids and timestamps not null, no duplicate events,
   ratings in range, no timestamp in the future, only known users and items.
2. A batch that fails is moved, files untouched, to ``rejected/<batch>/`` with the report
   (``report.json``, ``report.md``); the dataset does not change.
3. A batch that passes is written, normalised, to ``accepted/<batch>.parquet`` and its files
   moved to ``processed/<batch>/``.
4. `append_accepted` publishes a new dataset version with the accepted batches' events added
   (one atomic switch, `recsys.io.publish_dir`) and moves them to ``processed/``.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.io import atomic_write_bytes, atomic_write_json, publish_dir, read_json, staging_dir
from recsys.settings import Paths, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedBatch:
    batch_id: str
    files: list[Path]
    rows: int
    report: Any  # recsys.validation.ValidationReport
    accepted: Path | None  # the normalised batch when it passed


def pending(paths: Paths) -> list[Path]:
    """Batch files waiting in the incoming folder, oldest name first."""
    folder = paths.incoming
    return sorted(folder.glob("*.parquet")) if folder.exists() else []


def batch_key(files: list[Path]) -> str:
    """A key for these files as they are now (names, sizes, modification times)."""
    import hashlib

    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _known(dataset: Path, table: str, key: str) -> Any:
    return pd.read_parquet(dataset / f"{table}.parquet", columns=[key])[key].to_numpy()


def stage(settings: Settings, files: list[Path] | None = None) -> StagedBatch | None:
    """Validate the pending files as one batch and file them as accepted or rejected."""
    from recsys.schema import INTERACTIONS, DatasetValidationError
    from recsys.validation import CheckOutcome, ValidationReport, read_batch, validate_interactions

    paths = settings.paths
    files = pending(paths) if files is None else files
    if not files:
        return None
    batch_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{batch_key(files)[:8]}"
    frames, unreadable = [], []
    for path in files:
        try:
            frames.append(read_batch(path))
        except DatasetValidationError as exc:
            unreadable.append(str(exc))
    if unreadable:
        outcome = CheckOutcome(
            name="interactions readable", table="interactions", column=None, success=False,
            unexpected_count=len(unreadable), observed=None, detail="; ".join(unreadable),
        )  # fmt: skip
        report = ValidationReport(table="interactions", rows=0, outcomes=[outcome])
        frame = pd.DataFrame()
    else:
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        report = validate_interactions(
            frame,
            as_of=pd.Timestamp(settings.as_of or datetime.now(UTC)),
            known_users=_known(paths.dataset, "users", "user_id"),
            known_items=_known(paths.dataset, "items", "item_id"),
            max_user_share=None,  # a small batch may well come from one user
        )
    if not report.success:
        _file_away(files, paths.incoming / "rejected" / batch_id, report)
        log.warning("batch %s rejected: %s", batch_id, [o.name for o in report.failed])
        return StagedBatch(batch_id, files, len(frame), report, None)
    accepted = paths.incoming / "accepted" / f"{batch_id}.parquet"
    table = _canonical(frame, INTERACTIONS)
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(accepted, buffer.getvalue())
    _file_away(files, paths.incoming / "processed" / batch_id, report)
    return StagedBatch(batch_id, files, len(frame), report, accepted)


def _canonical(frame: pd.DataFrame, schema: Any) -> Any:
    import pyarrow as pa

    frame = frame.copy()
    stamps = pd.to_datetime(frame["event_timestamp"])
    frame["event_timestamp"] = (
        stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    )
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def _file_away(files: list[Path], folder: Path, report: Any) -> None:
    """Move the batch's files into ``folder`` with its validation report."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", report.to_metadata())
    atomic_write_bytes(folder / "report.md", report.markdown().encode())
    for path in files:
        os.replace(path, folder / path.name)


def accepted_batches(paths: Paths) -> list[Path]:
    folder = paths.incoming / "accepted"
    return sorted(folder.glob("*.parquet")) if folder.exists() else []


def append_accepted(settings: Settings) -> list[str]:
    """Publish a dataset version with every accepted batch's events; returns their ids."""
    from recsys.schema import TABLES, normalize_dataset
    from recsys.sql import connect, parquet, string

    paths = settings.paths
    batches = accepted_batches(paths)
    if not batches:
        return []
    manifest = read_json(paths.dataset / "manifest.json")
    with (
        staging_dir(paths.data_dir, "append") as merged,
        staging_dir(paths.data_dir, "dataset") as stage_dir,
    ):
        con = connect(settings.duckdb_memory_limit)
        for name in TABLES:
            if name != "interactions":
                shutil.copy(paths.dataset / f"{name}.parquet", merged / f"{name}.parquet")
        scans = " UNION ALL ".join(
            [f"SELECT * FROM {parquet(paths.dataset, 'interactions')}"]
            + [f"SELECT * FROM read_parquet({string(str(b))})" for b in batches]
        )
        con.execute(f"COPY ({scans}) TO {string(str(merged / 'interactions.parquet'))} "
                    "(FORMAT parquet)")  # fmt: skip
        summary = normalize_dataset(merged, stage_dir)  # the full canonical validation again
        ids = [b.stem for b in batches]
        atomic_write_json(
            stage_dir / "manifest.json",
            {**manifest, **vars(summary), "batches": [*manifest.get("batches", []), *ids]},
        )
        publish_dir(stage_dir, paths.dataset)
    done = paths.incoming / "processed"
    for batch in batches:
        (done / batch.stem).mkdir(parents=True, exist_ok=True)
        os.replace(batch, done / batch.stem / "normalised.parquet")
    log.info("appended batches %s: %s", ids, summary)
    return ids
