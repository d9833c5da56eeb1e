"""New interaction batches: picked up from ``<data>/incoming``, recognised, validated, staged.

A batch is every ``*.parquet`` file in the incoming folder at the time it is picked up (the
canonical interactions columns: user_id, item_id, rating, event_timestamp). Ingest is
idempotent, and nothing is ever lost or applied twice:

* **A file is known by its content** (SHA-256), whatever its name. A file whose content was
  already taken (appended to the dataset, or accepted and waiting) is moved, untouched, to
  ``duplicates/<batch>/`` with a report naming the batch that took it first.
* **An event is known by (user_id, item_id, event_timestamp)**, or by its ``event_id`` when
  the dataset has that optional column (then every batch must carry it). Events of a new file that
  the dataset (or a batch waiting to be appended) already holds are *dropped and counted*
  in the report, not appended twice; a batch made only of such events is filed under
  ``duplicates/``. Duplicates *within* one batch are an error of the batch (the check
  "interactions events unique" fails): the sender's data is inconsistent.
* A batch that fails a check is moved whole, files untouched, to ``rejected/<batch>/`` with
  the report (``report.json``, ``report.md``); the dataset does not change.
* A batch that passes is written, normalised and without its already-known events, to
  ``accepted/<batch>.parquet``, then its record ``accepted/<batch>.json`` (file names,
  hashes, counts) is written — the record is the commit point — and only then are the files
  moved to ``processed/<batch>/``. `recsys.dataset.append_accepted` appends it later.

Crash safety, in that order: killed before the record is written, the files are still in
``incoming/`` (a record-less parquet is deleted) and the next run stages them again; killed
after it, the files' hashes are in the record, so the next run files them as duplicates of
that batch. The dataset manifest, published atomically with the appended events, records
every appended batch and file hash (see `recsys.dataset`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.io import atomic_write_bytes, atomic_write_json, read_json
from recsys.settings import Paths, Settings

log = logging.getLogger(__name__)
EVENT_KEY = ("user_id", "item_id", "event_timestamp")


def with_event_ids(paths: Paths) -> bool:
    """Whether the published dataset identifies its events by ``event_id``."""
    from recsys.schema import has_event_id

    return has_event_id(paths.dataset / "interactions.parquet")


def event_key(paths: Paths) -> tuple[str, ...]:
    """The columns that identify an event of this dataset."""
    from recsys.schema import EVENT_ID

    return (EVENT_ID,) if with_event_ids(paths) else EVENT_KEY


def _schema(paths: Paths) -> Any:
    from recsys.schema import INTERACTIONS, INTERACTIONS_WITH_ID

    return INTERACTIONS_WITH_ID if with_event_ids(paths) else INTERACTIONS


@dataclass(frozen=True)
class StagedBatch:
    batch_id: str
    files: list[Path]
    rows: int
    report: Any  # recsys.validation.report.ValidationReport
    accepted: Path | None  # the normalised batch when it passed and had new events
    status: str = "accepted"  # accepted | rejected | duplicate
    duplicate_events: int = 0  # events dropped because the dataset already holds them
    duplicate_files: dict[str, str] = field(default_factory=dict)  # file name → first batch
    casts: list[Any] = field(default_factory=list)  # safe casts applied on load

    @property
    def new_events(self) -> int:
        return self.rows - self.duplicate_events if self.accepted else 0


def pending(paths: Paths) -> list[Path]:
    """Batch files waiting in the incoming folder, oldest name first."""
    folder = paths.incoming
    return sorted(folder.glob("*.parquet")) if folder.exists() else []


def batch_key(files: list[Path]) -> str:
    """A key for these files as they are now (names, sizes, modification times)."""
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def accepted_records(paths: Paths) -> list[dict[str, Any]]:
    """The accepted batches waiting to be appended (those whose record was written)."""
    folder = paths.incoming / "accepted"
    if not folder.exists():
        return []
    return [dict(read_json(p)) for p in sorted(folder.glob("*.json"))]


def known_files(paths: Paths) -> dict[str, str]:
    """SHA-256 → batch id of every file taken so far: appended or accepted and waiting."""
    known: dict[str, str] = {}
    manifest = paths.dataset / "manifest.json"
    if manifest.exists():
        known.update(read_json(manifest).get("batch_files", {}))
    for record in accepted_records(paths):
        known.update({f["sha256"]: record["batch"] for f in record["files"]})
    return known


def _known(dataset: Path, table: str, key: str) -> Any:
    return pd.read_parquet(dataset / f"{table}.parquet", columns=[key])[key].to_numpy()


def _drop_orphans(paths: Paths) -> None:
    """An accepted parquet without its record is from a run killed before its commit point:
    its files are still in incoming/, so it is staged again."""
    folder = paths.incoming / "accepted"
    if folder.exists():
        for part in folder.glob("*.parquet"):
            if not part.with_suffix(".json").exists():
                part.unlink()


def stage(settings: Settings, files: list[Path] | None = None) -> StagedBatch | None:
    """Recognise, validate and file the pending files as one batch (see the module doc)."""
    paths = settings.paths
    files = pending(paths) if files is None else files
    if not files:
        return None
    _drop_orphans(paths)
    batch_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{batch_key(files)[:8]}"
    known = known_files(paths)
    hashes = {path: file_hash(path) for path in files}
    resent = {p: known[h] for p, h in hashes.items() if h in known}
    first: dict[str, Path] = {}  # two copies of one file dropped together: the first counts
    for path in files:
        if path not in resent and first.setdefault(hashes[path], path) != path:
            resent[path] = batch_id
    fresh = [p for p in files if p not in resent]
    if resent:
        _file_resent(resent, paths.incoming / "duplicates" / batch_id)
    if not fresh:
        return StagedBatch(batch_id, files, 0, _report_of([], 0), None, "duplicate",
                           duplicate_files={p.name: b for p, b in resent.items()})  # fmt: skip
    frame, report, casts = _validate(settings, fresh)
    duplicates = {p.name: b for p, b in resent.items()}
    if not report.success:
        _file_away(fresh, paths.incoming / "rejected" / batch_id, report, {"casts": casts})
        log.warning("batch %s rejected: %s", batch_id, [o.name for o in report.failed])
        return StagedBatch(batch_id, fresh, len(frame), report, None, "rejected",
                           duplicate_files=duplicates, casts=casts)  # fmt: skip
    new = _new_events(paths, frame)
    dropped = len(frame) - len(new)
    extra = {"casts": casts, "duplicate_events": dropped, "new_events": len(new)}
    if new.empty:
        _file_away(fresh, paths.incoming / "duplicates" / batch_id, report,
                   {**extra, "status": "duplicate: every event is already in the dataset"})  # fmt: skip
        return StagedBatch(batch_id, fresh, len(frame), report, None, "duplicate", dropped,
                           duplicates, casts)  # fmt: skip
    accepted = _write_accepted(paths, batch_id, new, fresh, hashes, {**extra, "rows": len(frame)})
    _file_away(fresh, paths.incoming / "processed" / batch_id, report, extra)
    if dropped:
        log.info("batch %s: %d of %d events already ingested, dropped", batch_id, dropped,
                 len(frame))  # fmt: skip
    return StagedBatch(batch_id, fresh, len(frame), report, accepted, "accepted", dropped,
                       duplicates, casts)  # fmt: skip


def _validate(settings: Settings, files: list[Path]) -> tuple[pd.DataFrame, Any, list[Any]]:
    """Read the files as one frame and run the batch checks (Great Expectations)."""
    from recsys.schema import DatasetValidationError
    from recsys.validation.tables import validate_interactions

    paths = settings.paths
    frames, unreadable, casts = [], [], []
    for path in files:
        try:
            frame = _read(path)
        except DatasetValidationError as exc:
            unreadable.append(str(exc))
            continue
        casts += [{"file": path.name, **c} for c in frame.attrs.get("casts", [])]
        if "event_id" in frame and pd.api.types.is_integer_dtype(frame["event_id"]):
            # Integer ids are kept as text, as the dataset's are (recsys.schema).
            casts.append({"file": path.name, "table": "interactions", "column": "event_id",
                          "from_type": str(frame["event_id"].dtype), "to_type": "string",
                          "rows": len(frame)})  # fmt: skip
            frame["event_id"] = frame["event_id"].astype(str)
        frames.append(frame)
    if unreadable:
        return pd.DataFrame(), _report_of(unreadable, 0), casts
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    report = validate_interactions(
        frame,
        as_of=pd.Timestamp(settings.as_of or datetime.now(UTC)),
        known_users=_known(paths.dataset, "users", "user_id"),
        known_items=_known(paths.dataset, "items", "item_id"),
        max_user_share=None,  # a small batch may well come from one user
        event_id=with_event_ids(paths),  # a batch has event ids exactly when the dataset has
    )
    return frame, report, casts


def _read(path: Path) -> pd.DataFrame:
    from recsys.validation.tables import read_batch

    return read_batch(path)


def _report_of(unreadable: list[str], rows: int) -> Any:
    from recsys.validation.report import CheckOutcome, ValidationReport

    outcomes = []
    if unreadable:
        outcomes.append(CheckOutcome(
            name="interactions readable", table="interactions", column=None, success=False,
            unexpected_count=len(unreadable), observed=None, detail="; ".join(unreadable),
        ))  # fmt: skip
    return ValidationReport(table="interactions", rows=rows, outcomes=outcomes)


def _new_events(paths: Paths, frame: pd.DataFrame) -> pd.DataFrame:
    """The batch's events the dataset and the waiting accepted batches do not hold yet."""
    from recsys.sql import connect, parquet, string

    table = _canonical(frame, _schema(paths))
    key = event_key(paths)
    con = connect()
    con.register("batch", table)
    sources = [f"SELECT {', '.join(key)} FROM {parquet(paths.dataset, 'interactions')}"]
    sources += [
        f"SELECT {', '.join(key)} FROM read_parquet({string(str(p))})"
        for p in _accepted_parquets(paths)
    ]
    keys = " AND ".join(f"b.{c} = k.{c}" for c in key)
    new = con.execute(
        f"SELECT b.* FROM batch b WHERE NOT EXISTS "
        f"(SELECT 1 FROM ({' UNION ALL '.join(sources)}) k WHERE {keys})"
    ).arrow()
    return new.to_pandas() if hasattr(new, "to_pandas") else new.read_all().to_pandas()


def _accepted_parquets(paths: Paths) -> list[Path]:
    folder = paths.incoming / "accepted"
    return [folder / f"{r['batch']}.parquet" for r in accepted_records(paths)]


def _canonical(frame: pd.DataFrame, schema: Any) -> Any:
    import pyarrow as pa

    frame = frame.copy()
    stamps = pd.to_datetime(frame["event_timestamp"])
    frame["event_timestamp"] = (
        stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    ).astype("datetime64[us, UTC]")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def _write_accepted(
    paths: Paths, batch_id: str, new: pd.DataFrame, files: list[Path],
    hashes: dict[Path, str], extra: dict[str, Any],
) -> Path:  # fmt: skip
    """The normalised new events, then the record (the commit point)."""
    import pyarrow.parquet as pq

    accepted = paths.incoming / "accepted" / f"{batch_id}.parquet"
    buffer = io.BytesIO()
    pq.write_table(_canonical(new, _schema(paths)), buffer, compression="zstd")
    atomic_write_bytes(accepted, buffer.getvalue())
    record = {"batch": batch_id, "files": [{"name": p.name, "sha256": hashes[p]} for p in files],
              "accepted_at": datetime.now(UTC).isoformat(), **extra}  # fmt: skip
    atomic_write_json(accepted.with_suffix(".json"), record)
    return accepted


def _file_resent(resent: dict[Path, str], folder: Path) -> None:
    """Files whose content was taken before: kept, with a report naming the first batch."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", {
        "status": "duplicate file: its content was already ingested",
        "files": {p.name: {"first_ingested_in_batch": b} for p, b in resent.items()},
    })  # fmt: skip
    for path in resent:
        os.replace(path, folder / path.name)
    log.warning("files already ingested, filed under %s: %s", folder,
                {p.name: b for p, b in resent.items()})  # fmt: skip


def _file_away(files: list[Path], folder: Path, report: Any, extra: dict[str, Any]) -> None:
    """Move the batch's files into ``folder`` with its validation report."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", {**report.to_metadata(), **extra})
    atomic_write_bytes(folder / "report.md", report.markdown().encode())
    for path in files:
        os.replace(path, folder / path.name)
