"""New batches: picked up from ``<data>/incoming``, recognised, validated, staged.

A batch is every parquet file pending at the time it is picked up: interactions in
``incoming/*.parquet`` (the canonical columns: user_id, item_id, rating, event_timestamp),
user versions in ``incoming/users/*.parquet`` and item versions in ``incoming/items/*.parquet``
(the canonical users / items columns; ``valid_from``, when the row became true, defaults to
the batch's arrival: ``settings.as_of``, else now). Interactions may refer to users and items
of the same batch. Ingest is idempotent, and nothing is ever lost or applied twice:

* **A file is known by its content** (SHA-256), whatever its name. A file whose content was
  already taken (appended to the dataset, or accepted and waiting) is moved, untouched, to
  ``duplicates/<batch>/`` with a report naming the batch that took it first.
* **An event is known by (user_id, item_id, event_timestamp)**, or by its ``event_id`` when
  the dataset has that optional column (then every batch must carry it). Events of a new file that
  the dataset (or a batch waiting to be appended) already holds are *dropped and counted*
  in the report, not appended twice. Duplicates *within* one batch are an error of the batch
  (the check "interactions events unique" fails): the sender's data is inconsistent.
* **A user or item version is known by (id, valid_from)** (`recsys.versions`): a row equal
  to the version in force before it (a re-sent profile) is dropped and counted; a row that
  gives a known (id, valid_from) other attributes is a conflict, and rejects the batch.
  User and item rows pass the checks of the dataset's tables (`recsys.validation.tables`),
  per (id, valid_from), with valid_from not after as_of.
* A batch made only of known events and versions is filed under ``duplicates/``.
* A batch that fails a check is moved whole, files untouched, to ``rejected/<batch>/`` with
  the report (``report.json``, ``report.md``: table, column, rows); the dataset does not change.
* A batch that passes is written, normalised and without what is already known, to
  ``accepted/<batch>.parquet`` (its events, maybe none) and ``accepted/<batch>.users.parquet``
  / ``.items.parquet`` (its new versions, when any), then its record ``accepted/<batch>.json``
  (file names, hashes, counts) is written — the record is the commit point — and only then
  are the files moved to ``processed/<batch>/``. `recsys.dataset.append_accepted` appends it
  later.

Crash safety, in that order: killed before the record is written, the files are still in
``incoming/`` (record-less parquet files are deleted) and the next run stages them again;
killed after it, the files' hashes are in the record, so the next run files them as
duplicates of that batch. The dataset manifest, published atomically with the appended rows,
records every appended batch and file hash (see `recsys.dataset`).
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


ENTITY_FOLDERS = ("users", "items")  # incoming/<table>/*.parquet: versions of that table


@dataclass(frozen=True)
class StagedBatch:
    batch_id: str
    files: list[Path]
    rows: int  # interaction rows
    report: Any  # recsys.validation.report.ValidationReport
    accepted: Path | None  # the normalised batch when it passed and had something new
    status: str = "accepted"  # accepted | rejected | duplicate
    duplicate_events: int = 0  # events dropped because the dataset already holds them
    duplicate_files: dict[str, str] = field(default_factory=dict)  # file name → first batch
    casts: list[Any] = field(default_factory=list)  # safe casts applied on load
    # users / items → {"new": ids, "changed": ids, "unchanged": rows dropped as no-ops}
    catalogue: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def new_events(self) -> int:
        return self.rows - self.duplicate_events if self.accepted else 0


def pending(paths: Paths) -> list[Path]:
    """Batch files waiting in the incoming folder: interactions, then users, then items, each
    oldest name first."""
    folder = paths.incoming
    if not folder.exists():
        return []
    return [
        *sorted(folder.glob("*.parquet")),
        *(f for table in ENTITY_FOLDERS for f in sorted((folder / table).glob("*.parquet"))),
    ]


def table_of(path: Path) -> str:
    """The table a pending file holds rows of (its folder says)."""
    return path.parent.name if path.parent.name in ENTITY_FOLDERS else "interactions"


def display_name(path: Path) -> str:
    """A pending file's name in reports and records: ``users/<file>`` for user versions."""
    return f"{path.parent.name}/{path.name}" if table_of(path) != "interactions" else path.name


def batch_key(files: list[Path]) -> str:
    """A key for these files as they are now (names, sizes, modification times)."""
    parts = [f"{display_name(f)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
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


def accepted_files(paths: Paths, batch: str) -> dict[str, Path]:
    """An accepted batch's normalised files by table (the tables it has rows of)."""
    folder = paths.incoming / "accepted"
    files = {"interactions": folder / f"{batch}.parquet"}
    files |= {t: folder / f"{batch}.{t}.parquet" for t in ENTITY_FOLDERS}
    return {t: f for t, f in files.items() if f.exists()}


def known_files(paths: Paths) -> dict[str, str]:
    """SHA-256 → batch id of every file taken so far: appended or accepted and waiting."""
    known: dict[str, str] = {}
    manifest = paths.dataset / "manifest.json"
    if manifest.exists():
        known.update(read_json(manifest).get("batch_files", {}))
    for record in accepted_records(paths):
        known.update({f["sha256"]: record["batch"] for f in record["files"]})
    return known


def _drop_orphans(paths: Paths) -> None:
    """Accepted parquet files without their record are from a run killed before its commit
    point: their files are still in incoming/, so they are staged again."""
    folder = paths.incoming / "accepted"
    if folder.exists():
        for part in folder.glob("*.parquet"):
            if not (folder / f"{part.name.split('.')[0]}.json").exists():
                part.unlink()


def stage(settings: Settings, files: list[Path] | None = None) -> StagedBatch | None:
    """Recognise, validate and file the pending files as one batch (see the module doc)."""
    from recsys.incoming_checks import report_of, validate

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
    duplicates = {display_name(p): b for p, b in resent.items()}
    if not fresh:
        return StagedBatch(batch_id, files, 0, report_of({}, 0), None, "duplicate",
                           duplicate_files=duplicates)  # fmt: skip
    checked = validate(settings, fresh)
    frame, report, casts = checked.events, checked.report, checked.casts
    if not report.success:
        _file_away(fresh, paths.incoming / "rejected" / batch_id, report, {"casts": casts})
        log.warning("batch %s rejected: %s", batch_id, [o.name for o in report.failed])
        return StagedBatch(batch_id, fresh, len(frame), report, None, "rejected",
                           duplicate_files=duplicates, casts=casts)  # fmt: skip
    new = _new_events(paths, frame) if len(frame) else frame
    dropped = len(frame) - len(new)
    catalogue = {t: v.counts() for t, v in checked.versions.items()}
    extra = {"casts": casts, "duplicate_events": dropped, "new_events": len(new),
             "catalogue": catalogue}  # fmt: skip
    if new.empty and not any(len(v.new) for v in checked.versions.values()):
        _file_away(fresh, paths.incoming / "duplicates" / batch_id, report,
                   {**extra, "status": "duplicate: every row is already in the dataset"})  # fmt: skip
        return StagedBatch(batch_id, fresh, len(frame), report, None, "duplicate", dropped,
                           duplicates, casts, catalogue)  # fmt: skip
    versions = {t: v.new for t, v in checked.versions.items() if len(v.new)}
    accepted = _write_accepted(paths, batch_id, new, versions, fresh, hashes,
                               {**extra, "rows": len(frame)})  # fmt: skip
    _file_away(fresh, paths.incoming / "processed" / batch_id, report, extra)
    if dropped:
        log.info("batch %s: %d of %d events already ingested, dropped", batch_id, dropped,
                 len(frame))  # fmt: skip
    return StagedBatch(batch_id, fresh, len(frame), report, accepted, "accepted", dropped,
                       duplicates, casts, catalogue)  # fmt: skip


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

    if frame.empty and "event_timestamp" not in frame:
        return schema.empty_table()  # a batch of user or item versions only
    frame = frame.copy()
    stamps = pd.to_datetime(frame["event_timestamp"])
    frame["event_timestamp"] = (
        stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    ).astype("datetime64[us, UTC]")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _write_accepted(
    paths: Paths, batch_id: str, new: pd.DataFrame, versions: dict[str, pd.DataFrame],
    files: list[Path], hashes: dict[Path, str], extra: dict[str, Any],
) -> Path:  # fmt: skip
    """The normalised new events (maybe none) and versions, then the record (the commit
    point)."""
    from recsys.versions import to_arrow

    accepted = paths.incoming / "accepted" / f"{batch_id}.parquet"
    for table, frame in versions.items():
        atomic_write_bytes(accepted.with_suffix(f".{table}.parquet"),
                           _parquet_bytes(to_arrow(table, frame)))  # fmt: skip
    atomic_write_bytes(accepted, _parquet_bytes(_canonical(new, _schema(paths))))
    record = {"batch": batch_id,
              "files": [{"name": display_name(p), "sha256": hashes[p]} for p in files],
              "accepted_at": datetime.now(UTC).isoformat(), **extra}  # fmt: skip
    atomic_write_json(accepted.with_suffix(".json"), record)
    return accepted


def _move(files: list[Path], folder: Path) -> None:
    """Move pending files into ``folder``, user and item versions into its users/ and items/."""
    for path in files:
        target = folder / display_name(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _file_resent(resent: dict[Path, str], folder: Path) -> None:
    """Files whose content was taken before: kept, with a report naming the first batch."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", {
        "status": "duplicate file: its content was already ingested",
        "files": {display_name(p): {"first_ingested_in_batch": b} for p, b in resent.items()},
    })  # fmt: skip
    _move(list(resent), folder)
    log.warning("files already ingested, filed under %s: %s", folder,
                {display_name(p): b for p, b in resent.items()})  # fmt: skip


def _file_away(files: list[Path], folder: Path, report: Any, extra: dict[str, Any]) -> None:
    """Move the batch's files into ``folder`` with its validation report."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", {**report.to_metadata(), **extra})
    atomic_write_bytes(folder / "report.md", report.markdown().encode())
    _move(files, folder)
