"""The published dataset's life: the first ingest of the source, then the accepted batches
appended to it, each new version audited before it is published.

* `ensure_dataset` ingests the configured source only when there is no dataset yet, or the
  source changed; an existing dataset with batches appended is kept as it is.
* `append_accepted` writes a new dataset version in staging (the published interactions plus
  the accepted batches' events that it does not hold yet; the users' and items' versions:
  all of them, the published current and history rows and the batches' new ones, with the
  latest per id as the current row and the others in ``<table>_history.parquet``), audits it
  with the dataset's blocking checks (`recsys.audit.audit_dataset`), and publishes it in one
  atomic switch together with its manifest, which records every appended batch and file hash
  and, per batch, its new and changed users and items (``catalogue_changes``). Only then are
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
from pathlib import Path
from typing import Any

from recsys.audit import Audit, audit_dataset, publish_audited, read_audit
from recsys.incoming import ENTITY_FOLDERS, accepted_files, accepted_records, event_key
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
        for table in ENTITY_FOLDERS:
            _merge_versions(con, paths, table, [r["batch"] for r in records], merged)
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
            "catalogue_changes": {**manifest.get("catalogue_changes", {}),
                                  **{r["batch"]: r["catalogue"] for r in records
                                     if r.get("catalogue")}},
        })  # fmt: skip
        added = summary.interactions - int(manifest.get("interactions", 0))
        audit = publish_audited(stage, paths.dataset, paths.data_dir, audit_dataset)
    if not audit.passed:
        _reject(paths, records, audit)
        return AppendResult(rejected=ids, audit=audit)
    _finish(paths, records)
    log.info("appended batches %s: %d new events; %s", ids, added, summary)
    return AppendResult([*(r["batch"] for r in landed), *ids], added, [], audit)


def _merge_versions(con: Any, paths: Paths, table: str, batches: list[str], out: Path) -> None:
    """Every version of ``table``: the published current and history rows and the batches'
    new ones, the latest per id written as ``out/<table>.parquet``, the rest as its history
    (absent when there is none). A (id, valid_from) already published keeps its row."""
    from recsys.schema import HISTORY, PRIMARY_KEYS, TABLES, VALID_FROM
    from recsys.sql import parquet, string

    waiting = [f for b in batches if (f := accepted_files(paths, b).get(table)) is not None]
    history = paths.dataset / f"{HISTORY[table]}.parquet"
    if not waiting:  # nothing new: the published tables as they are
        for path in (paths.dataset / f"{table}.parquet", history):
            if path.exists():
                shutil.copy(path, out / path.name)
        return
    key, columns = PRIMARY_KEYS[table], ", ".join(TABLES[table].names)
    published = [paths.dataset / f"{table}.parquet", *([history] if history.exists() else [])]
    scans = [f"SELECT {_columns(p, table)}, {k} AS _src FROM {parquet(p.parent, p.stem)}"
             for k, p in enumerate([*published, *waiting])]  # fmt: skip
    con.execute(f"""CREATE OR REPLACE TEMP TABLE versions AS
        SELECT {columns}, row_number() OVER (PARTITION BY {key} ORDER BY {VALID_FROM} DESC) AS _n
        FROM ({" UNION ALL ".join(scans)})
        QUALIFY row_number() OVER (PARTITION BY {key}, {VALID_FROM} ORDER BY _src) = 1""")  # fmt: skip
    con.execute(f"COPY (SELECT {columns} FROM versions WHERE _n = 1 ORDER BY {key}) "
                f"TO {string(str(out / f'{table}.parquet'))} (FORMAT parquet)")  # fmt: skip
    (past,) = con.execute("SELECT count(*) FROM versions WHERE _n > 1").fetchone() or (0,)
    if past:
        con.execute(f"COPY (SELECT {columns} FROM versions WHERE _n > 1 "
                    f"ORDER BY {key}, {VALID_FROM}) "
                    f"TO {string(str(out / f'{HISTORY[table]}.parquet'))} (FORMAT parquet)")  # fmt: skip


def _columns(path: Path, table: str) -> str:
    """The canonical columns of a user or item file; ``valid_from`` at the epoch when the file
    predates it."""
    import pyarrow.parquet as pq

    from recsys.schema import TABLES, VALID_FROM

    names = [n for n in TABLES[table].names if n != VALID_FROM]
    stamp = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
    if VALID_FROM in pq.read_schema(path).names:
        stamp = f"COALESCE({VALID_FROM}, {stamp})"
    return ", ".join([*names, f"{stamp} AS {VALID_FROM}"])


def _finish(paths: Paths, records: list[dict[str, Any]]) -> None:
    """Move appended batches from accepted/ to processed/<batch>/ (record last)."""
    for record in records:
        batch = record["batch"]
        accepted = paths.incoming / "accepted" / f"{batch}.parquet"
        folder = paths.incoming / "processed" / batch
        folder.mkdir(parents=True, exist_ok=True)
        _move_normalised(paths, batch, folder)
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
        _move_normalised(paths, batch, folder)
        os.replace(accepted.with_suffix(".json"), folder / "accepted.json")
        log.warning("batch %s rejected with the dataset (%s); moved to %s", batch,
                    ", ".join(audit.failed), folder)  # fmt: skip


def _move_normalised(paths: Paths, batch: str, folder: Path) -> None:
    """An accepted batch's normalised files into ``folder``: ``normalised.parquet`` (its
    events), ``normalised.users.parquet`` / ``normalised.items.parquet`` (its versions)."""
    for table, path in accepted_files(paths, batch).items():
        name = "normalised.parquet" if table == "interactions" else f"normalised.{table}.parquet"
        os.replace(path, folder / name)
