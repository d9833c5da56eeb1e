"""Write, audit, publish: a published artifact is validated where it was written, before
anyone can see it.

Every step that publishes (dataset, features, training set) writes into a staging folder,
runs its blocking checks on that folder, and only then switches the published link
(`recsys.io.publish_dir`). When a blocking check fails, what is published stays exactly as
it was, and the staged folder is kept, with the report, under
``<data>/rejected/<what>-<time>-<id>/`` for inspection: nothing is lost, and the report
says where it is.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.io import atomic_write_bytes, atomic_write_json, publish_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Audit:
    """The blocking checks of one staged artifact: one entry per check, passed or not."""

    what: str  # "dataset", "features", "training set"
    checks: dict[str, bool]  # check name → passed
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able, per check or table
    markdown: str = ""
    kept_at: str | None = None  # where a rejected artifact was kept

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not ok]

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "passed": self.passed, "checks": self.checks,
                "failed": self.failed, "details": self.details, "kept_at": self.kept_at}  # fmt: skip


class AuditFailed(RuntimeError):
    """A staged artifact failed a blocking check; nothing was published."""

    def __init__(self, audit: Audit) -> None:
        self.audit = audit
        super().__init__(
            f"{audit.what} not published: failed {', '.join(audit.failed)}; "
            f"the rejected {audit.what} and its report are kept in {audit.kept_at}"
        )


def rejected_root(data_dir: Path) -> Path:
    return Path(data_dir) / "rejected"


def keep_rejected(stage: Path, data_dir: Path, audit: Audit) -> Audit:
    """Move a staged artifact that failed its audit to ``<data>/rejected/`` with its report;
    returns the audit with ``kept_at`` set."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = audit.what.replace(" ", "_")
    kept = rejected_root(data_dir) / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"
    kept.parent.mkdir(parents=True, exist_ok=True)
    os.rename(stage, kept)  # same filesystem: the staging folder is inside the data folder
    audit = Audit(audit.what, audit.checks, audit.details, audit.markdown, str(kept))
    atomic_write_json(kept / "report.json", audit.to_json())
    atomic_write_bytes(kept / "report.md", (audit.markdown or str(audit.to_json())).encode())
    log.warning("%s rejected (%s); kept in %s", audit.what, ", ".join(audit.failed), kept)
    return audit


def publish_audited(
    stage: Path, target: Path, data_dir: Path, audit: Callable[[Path], Audit]
) -> Audit:
    """Audit ``stage``; publish it as ``target`` when every blocking check passed, else keep
    it under ``<data>/rejected/``. Returns the audit either way (``kept_at`` set when it was
    rejected); the caller decides whether a rejection is an error."""
    result = audit(stage)
    if result.passed:
        atomic_write_json(stage / "audit.json", result.to_json())
        publish_dir(stage, target)
        return result
    return keep_rejected(stage, data_dir, result)


def read_audit(folder: Path) -> Audit | None:
    """The audit a published folder passed (written beside it when it was published)."""
    path = Path(folder) / "audit.json"
    if not path.exists():
        return None
    import json

    raw = json.loads(path.read_text())
    return Audit(raw["what"], dict(raw["checks"]), raw.get("details", {}), "", raw.get("kept_at"))


# --- the audits of each artifact ------------------------------------------------------------
def audit_dataset(folder: Path) -> Audit:
    """The dataset's blocking checks (Great Expectations, `recsys.validation`): every check
    on users, items and interactions (nothing from the future, known ids, unique events),
    and on the users' and items' superseded versions when the folder has them (reported
    with their table)."""
    import pandas as pd

    from recsys.schema import HISTORY
    from recsys.validation.tables import validate_interactions, validate_items, validate_users

    users = pd.read_parquet(folder / "users.parquet")
    items = pd.read_parquet(folder / "items.parquet")
    past = {
        t: pd.read_parquet(folder / f"{h}.parquet") if (folder / f"{h}.parquet").exists() else None
        for t, h in HISTORY.items()
    }
    events = pd.read_parquet(folder / "interactions.parquet")
    reports = {
        "interactions": validate_interactions(
            events,
            as_of=pd.Timestamp.now(tz="UTC"),  # nothing from the future (as_of may hide some)
            known_users=users.user_id.to_numpy(),
            known_items=items.item_id.to_numpy(),
        ),
        "users": validate_users(users, past["users"]),
        "items": validate_items(items, past["items"]),
    }
    return _from_reports("dataset", reports)


def audit_features(folder: Path) -> Audit:
    """Each feature table non-empty, keys and timestamps present and not null, one row per
    entity and time (`recsys.validation.tables.validate_feature_table`)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from recsys.features.catalog import CATALOG
    from recsys.validation.tables import feature_table_columns, validate_feature_table

    reports = {}
    for view in CATALOG.views:
        path = folder / f"{view.name}.parquet"
        names = set(pq.read_schema(path).names)  # only the checked columns are read
        columns = [c for c in feature_table_columns(view.key) if c in names]
        frame = pd.read_parquet(path, columns=columns)
        reports[view.name] = validate_feature_table(frame, key=view.key, table=view.name)
    return _from_reports("features", reports)


def _from_reports(what: str, reports: dict[str, Any]) -> Audit:
    checks = {f"{table} valid": bool(r.success) for table, r in reports.items()}
    details = {
        f"{table} valid": {
            "rows": r.rows,
            "failed": {o.name: o.detail for o in r.failed},
            "outcomes": r.to_metadata(),
        }  # fmt: skip
        for table, r in reports.items()
    }
    markdown = "\n\n".join(f"### {table}\n\n{r.markdown()}" for table, r in reports.items())
    return Audit(what, checks, details, markdown)


def audit_training_inputs(paths: Any) -> Audit:
    """What the training set reads, checked again before it is read (a ``retrain`` run
    starts here): the dataset and the feature tables were published through their audits,
    and the features were computed from the dataset version that is published now."""
    from recsys.io import read_json

    dataset, features = read_audit(paths.dataset), read_audit(paths.features)
    checks: dict[str, bool] = {
        "dataset audited": dataset is not None and dataset.passed,
        "features audited": features is not None and features.passed,
    }
    details: dict[str, Any] = {}
    manifest = paths.features / "manifest.json"
    built_from = read_json(manifest).get("dataset_version") if manifest.exists() else None
    published = Path(paths.dataset).resolve().name
    checks["features from the published dataset"] = built_from == published
    if built_from != published:
        details["features from the published dataset"] = {
            "failed": {"stale features": f"the features were computed from dataset version "
                       f"{built_from}, the published dataset is {published}: rebuild the "
                       f"features (job feature_refresh or full_pipeline)"}}  # fmt: skip
    return Audit("training inputs", checks, details)


def audit_training_set(expected_rows: int) -> Callable[[Path], Audit]:
    """The staged training set: one row per entity row (the join lost or duplicated none),
    keys and times never null, and each split non-empty."""

    def audit(folder: Path) -> Audit:
        from recsys.sql import connect, one, string

        table = f"read_parquet({string(str(folder / 'training_set.parquet'))})"
        rows, null_keys, train, val, test = one(connect(), f"""
            SELECT count(*), 3 * count(*) - count(user_id) - count(item_id)
                   - count(event_timestamp), count(*) FILTER (split = 'train'),
                   count(*) FILTER (split = 'val'), count(*) FILTER (split = 'test')
            FROM {table}""")  # fmt: skip
        splits = {"train": train, "val": val, "test": test}
        checks = {
            "training set rows match entity rows": rows == expected_rows,
            "training set keys not null": null_keys == 0,
            "training set splits not empty": min(splits.values()) > 0,
        }
        details = {
            "training set rows match entity rows": {"rows": rows, "expected": expected_rows},
            "training set keys not null": {"null_values": null_keys},
            "training set splits not empty": {"rows": splits},
        }
        return Audit("training set", checks, details)

    return audit


def audit_candidates(table: Any, version: str, dataset: Path, as_of: Any) -> Audit:
    """A version's candidates before they go online: every row of this version, one row
    per user, no item the user interacted with before ``as_of`` (serving excludes them)."""
    import duckdb

    from recsys.sql import parquet, timestamp

    con = duckdb.connect()
    con.register("candidates", table)
    rows, users, other = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), "
        f"count(*) FILTER (model_version IS DISTINCT FROM '{version}') FROM candidates"
    ).fetchone() or (0, 0, 0)
    (seen,) = con.execute(f"""
        SELECT count(*) FROM (SELECT user_id, unnest(candidate_item_ids) AS item_id
                              FROM candidates) c
        SEMI JOIN (SELECT user_id, item_id FROM {parquet(dataset, "interactions")}
                   WHERE event_timestamp < {timestamp(as_of)}) e USING (user_id, item_id)
    """).fetchone() or (0,)
    checks = {
        "candidates of this version": other == 0 and rows > 0,
        "candidates one row per user": rows == users,
        "candidates exclude seen items": seen == 0,
    }
    details = {"candidates of this version": {"rows": rows, "other_versions": other},
               "candidates one row per user": {"rows": rows, "users": users},
               "candidates exclude seen items": {"seen_items": seen}}  # fmt: skip
    return Audit("candidates", checks, details)
