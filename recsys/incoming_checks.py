"""The checks of an incoming batch (`recsys.incoming`): each file read as its table's
canonical columns, the user and item versions checked (`recsys.validation.tables`) and sorted
against the known ones (`recsys.versions`), then the interactions, against the users and
items of the dataset, of the batches waiting and of this batch. Every outcome goes into one
report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.incoming import (
    ENTITY_FOLDERS,
    accepted_files,
    accepted_records,
    display_name,
    table_of,
    with_event_ids,
)
from recsys.settings import Paths, Settings


def catalogue_check_names() -> tuple[str, ...]:
    """Every check a batch's user and item rows get, by name: for a caller that declares one
    check per outcome (the ``incoming_batch`` asset's blocking checks)."""
    from recsys.validation.tables import EPOCH, version_checks

    return tuple(
        name
        for table in ENTITY_FOLDERS
        for name in [
            readable_name(table),
            *(c.name for c in version_checks(table, EPOCH)),
            consistency_name(table),
        ]  # fmt: skip
    )


def readable_name(table: str) -> str:
    return f"{table} readable"


def consistency_name(table: str) -> str:
    return f"{table} versions consistent"


@dataclass(frozen=True)
class Checked:
    events: pd.DataFrame  # the batch's interactions (empty when it has none)
    report: Any  # every check's outcome, all tables together
    casts: list[Any]
    versions: dict[str, Any]  # users / items → recsys.versions.Versions (when checked)


def _read_all(
    files: list[Path],
) -> tuple[dict[str, list[pd.DataFrame]], dict[str, list[str]], list[Any]]:
    """Each file read as its table's canonical columns; the unreadable ones (what is wrong
    with each, by table); the casts."""
    from recsys.schema import DatasetValidationError

    frames: dict[str, list[pd.DataFrame]] = {}
    unreadable: dict[str, list[str]] = {}
    casts: list[Any] = []
    for path in files:
        table = table_of(path)
        try:
            frame = _read(path, table)
        except DatasetValidationError as exc:
            unreadable.setdefault(table, []).append(str(exc))
            continue
        casts += [{"file": display_name(path), **c} for c in frame.attrs.get("casts", [])]
        if "event_id" in frame and pd.api.types.is_integer_dtype(frame["event_id"]):
            # Integer ids are kept as text, as the dataset's are (recsys.schema).
            casts.append({"file": path.name, "table": "interactions", "column": "event_id",
                          "from_type": str(frame["event_id"].dtype), "to_type": "string",
                          "rows": len(frame)})  # fmt: skip
            frame["event_id"] = frame["event_id"].astype(str)
        frames.setdefault(table, []).append(frame)
    return frames, unreadable, casts


def validate(settings: Settings, files: list[Path]) -> Checked:
    """Read the files and run the batch checks (Great Expectations) of each table: user and
    item versions first (the interactions may refer to them), then the interactions."""
    from recsys.validation.report import ValidationReport
    from recsys.validation.tables import validate_interactions, validate_versions, with_valid_from

    paths = settings.paths
    as_of = pd.Timestamp(settings.as_of or datetime.now(UTC))
    frames, unreadable, casts = _read_all(files)
    if unreadable:
        return Checked(pd.DataFrame(), report_of(unreadable, 0), casts, {})
    reports, versions, entities = [], {}, {}
    for table in ENTITY_FOLDERS:
        if table not in frames:
            continue
        frame = pd.concat(frames[table], ignore_index=True)
        # No valid_from: true from the batch's arrival.
        entities[table] = frame = with_valid_from(frame, _utc(as_of))
        reports.append(validate_versions(table, frame, as_of))
        if reports[-1].success:
            versions[table] = _versions(paths, table, frame)
            reports.append(_consistent(table, versions[table].conflicts, len(frame)))
    events = pd.DataFrame()
    if "interactions" in frames:
        parts = frames["interactions"]
        events = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        reports.insert(0, validate_interactions(
            events,
            as_of=as_of,
            known_users=_known(paths, "users", "user_id", entities.get("users")),
            known_items=_known(paths, "items", "item_id", entities.get("items")),
            max_user_share=None,  # a small batch may well come from one user
            event_id=with_event_ids(paths),  # a batch has event ids exactly when the dataset has
        ))  # fmt: skip
    if len(reports) == 1:
        return Checked(events, reports[0], casts, versions)
    outcomes = [o for r in reports for o in r.outcomes]
    report = ValidationReport(" + ".join(dict.fromkeys(r.table for r in reports)),
                              sum(r.rows for r in reports if r.outcomes), outcomes)  # fmt: skip
    return Checked(events, report, casts, versions)


def _utc(when: pd.Timestamp) -> pd.Timestamp:
    return when.tz_convert("UTC") if when.tzinfo else when.tz_localize("UTC")


def _versions(paths: Paths, table: str, frame: pd.DataFrame) -> Any:
    """The batch's versions against those of the dataset and of the waiting batches."""
    from recsys.schema import PRIMARY_KEYS
    from recsys.versions import classify, dataset_files, read_versions

    waiting = [accepted_files(paths, r["batch"]).get(table) for r in accepted_records(paths)]
    files = [*dataset_files(paths.dataset, table), *(f for f in waiting if f is not None)]
    known = read_versions(files, table, frame[PRIMARY_KEYS[table]].unique().tolist())
    return classify(table, frame, known)


def _consistent(table: str, conflicts: list[str], rows: int) -> Any:
    """A check outcome: no row gives a recorded (id, valid_from) other attributes."""
    from recsys.schema import EXAMPLES
    from recsys.validation.report import CheckOutcome, ValidationReport

    detail = (f"{len(conflicts)} of {rows} rows change a version already recorded (send a "
              f"change with a later valid_from instead): {'; '.join(conflicts[:EXAMPLES])}"
              if conflicts else "no row changes a recorded version")  # fmt: skip
    outcome = CheckOutcome(consistency_name(table), table, "valid_from", not conflicts,
                           len(conflicts), None, detail)  # fmt: skip
    return ValidationReport(table, 0, [outcome])


def _read(path: Path, table: str = "interactions") -> pd.DataFrame:
    from recsys.validation.tables import read_batch

    return read_batch(path, table)


def report_of(unreadable: dict[str, list[str]], rows: int) -> Any:
    """A failed "<table> readable" check per table with unreadable files (``unreadable``:
    what is wrong with each file, by table)."""
    from recsys.validation.report import CheckOutcome, ValidationReport

    outcomes = [
        CheckOutcome(name=readable_name(table), table=table, column=None, success=False,
                     unexpected_count=len(problems), observed=None, detail="; ".join(problems))
        for table, problems in unreadable.items()
    ]  # fmt: skip
    return ValidationReport(table="interactions", rows=rows, outcomes=outcomes)


def _known(paths: Paths, table: str, key: str, batch: pd.DataFrame | None) -> Any:
    """The ids of ``table``: the dataset's, the waiting batches' and this batch's."""
    import numpy as np

    files = [paths.dataset / f"{table}.parquet"]
    files += [f for r in accepted_records(paths) for t, f in accepted_files(paths, r["batch"]).items()
              if t == table]  # fmt: skip
    ids = [pd.read_parquet(f, columns=[key])[key].to_numpy() for f in files]
    if batch is not None and key in batch:
        ids.append(batch[key].dropna().to_numpy())
    return np.concatenate(ids)
