"""Catalogue refresh: new and changed items served without a retrain.

The published dataset's items are compared with the current version's LanceDB table, which
holds each item's attributes (``title``, ``genres``, ``release_year``) beside its vector.
When items were added or changed, a new immutable version is derived from the current one:
its files copied byte for byte (same weights, same ONNX user tower, same metrics), its
version.json naming the parent (``derived_from``) and the ``catalogue`` it was built from,
its quality gate inherited (the weights the gate judged did not change). Its item table
gets the item tower's vectors of the new and changed items only, with the features Feast
returns as of ``as_of`` (a new id takes the unknown-id slot), and the parent's vectors of
every other item, copied. The ``catalogue_version`` and ``item_embeddings`` assets call
these; tests call them without Dagster.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys import fallback
from recsys.index.table import ID_COLUMN, column_numpy, open_published, vectors_numpy
from recsys.registry import GATED

ATTRIBUTES = ("title", "genres", "release_year")
# Files of the parent a derived version does not copy: its own record, and the candidates
# its run writes (``user_candidates``, through ``ModelRegistry.add_artifact``).
NOT_COPIED = ("version.json", "candidates.parquet")


@dataclass(frozen=True)
class CatalogueDiff:
    """The published items against a version's item table."""

    items: int  # items in the published dataset
    new: np.ndarray  # (n,) int64 ids not in the table, ascending
    changed: np.ndarray  # (c,) int64 ids whose attributes differ, ascending

    @property
    def refreshed(self) -> np.ndarray:
        """(n + c,) ids whose vectors the item tower computes again, ascending."""
        return np.union1d(self.new, self.changed)

    @property
    def empty(self) -> bool:
        return self.new.size == 0 and self.changed.size == 0


@dataclass(frozen=True)
class RefreshPlan:
    """What a ``catalogue_refresh`` run does: derive from ``parent``, or nothing and why."""

    parent: str | None
    diff: CatalogueDiff | None
    reason: str

    @property
    def derive(self) -> bool:
        return self.parent is not None and self.diff is not None and not self.diff.empty


def read_items(dataset: Path) -> pa.Table:
    """The published items (id and attributes) with Arrow: a nullable int column
    (release_year) stays int64, as ``item_embeddings`` writes it."""
    return pq.read_table(Path(dataset) / "items.parquet", columns=[ID_COLUMN, *ATTRIBUTES])


def _rows(table: pa.Table, columns: list[str]) -> dict[int, tuple[Any, ...]]:
    ids = column_numpy(table, ID_COLUMN).astype(np.int64).tolist()
    values = [table.column(c).to_pylist() for c in columns]
    return {i: tuple(v[n] for v in values) for n, i in enumerate(ids)}


def catalogue_diff(items: pa.Table, served: pa.Table) -> CatalogueDiff:
    """New ids of ``items`` and ids whose attributes differ from ``served`` (a version's item
    table): only the attribute columns both hold are compared."""
    columns = [c for c in ATTRIBUTES if c in items.column_names and c in served.column_names]
    now, before = _rows(items, columns), _rows(served, columns)
    new = [i for i in now if i not in before]
    changed = [i for i, row in now.items() if i in before and before[i] != row]
    return CatalogueDiff(len(now), np.array(sorted(new), dtype=np.int64),
                         np.array(sorted(changed), dtype=np.int64))  # fmt: skip


def plan_refresh(reg: Any, run_id: str, db_dir: Any, items: pa.Table) -> RefreshPlan:
    """Whether run ``run_id`` derives a version with the catalogue ``items``, and from what."""
    built = reg.built_by(run_id)
    if built is not None:
        return RefreshPlan(None, None, f"this run built version {built}: its item vectors "
                           "cover the published catalogue")  # fmt: skip
    current = reg.current()
    if current is None:
        return RefreshPlan(None, None, "no current version to derive from")
    info = reg.info(current)
    if fallback.is_fallback(info):
        return RefreshPlan(None, None, f"current version {current} is a fallback baseline "
                           f"({info.get('baseline')}): it has no item tower to embed new items "
                           "with; they are scored by the next training run")  # fmt: skip
    table, _ = open_published(db_dir, current)
    diff = catalogue_diff(items, table.to_arrow())
    if diff.empty:
        return RefreshPlan(current, diff, f"catalogue unchanged since {current}: "
                           f"{diff.items} items, none new or changed")  # fmt: skip
    return RefreshPlan(current, diff, f"{diff.new.size} new and {diff.changed.size} changed "
                       f"items since {current}")  # fmt: skip


def catalogue_record(
    dataset: Path, items: int, diff: CatalogueDiff | None = None
) -> dict[str, Any]:
    """version.json's ``catalogue``: the dataset version it was built from, its item count,
    and (for a derived version) the items its run embedded."""
    record: dict[str, Any] = {
        "dataset_version": Path(dataset).resolve().name,
        "items": int(items),
        "refreshed_at": datetime.now(UTC).isoformat(),
    }
    if diff is not None:
        record.update(new_items=int(diff.new.size), changed_items=int(diff.changed.size),
                      new_item_ids=diff.new.tolist(), changed_item_ids=diff.changed.tolist())  # fmt: skip
    return record


def published_catalogue(dataset: Path) -> dict[str, Any]:
    """The ``catalogue`` of a version trained on the published ``dataset`` folder."""
    from recsys.io import read_json

    return catalogue_record(dataset, int(read_json(Path(dataset) / "manifest.json")["items"]))


def derive_version(reg: Any, parent: str, run_id: str, catalogue: dict[str, Any]) -> str:
    """A new version of ``parent``'s weights for a newer catalogue, built and gated by
    ``run_id``: every file copied byte for byte but its record and candidates."""
    info = reg.info(parent)
    keep = {k: v for k, v in info.items()
            if k not in ("version", "run_id", "created_at", "state", "catalogue", "derived_from")}  # fmt: skip
    version = reg.new_version(info["fingerprint"])
    record = {**keep, "derived_from": parent, "catalogue": catalogue}
    with reg.build(version, run_id, record, reason=f"derived from {parent} for a catalogue "
                   "refresh: weights copied") as folder:  # fmt: skip
        for path in sorted(reg.path(parent).iterdir()):
            if path.name in NOT_COPIED:
                continue
            if path.is_dir():
                shutil.copytree(path, folder / path.name)
            else:
                shutil.copyfile(path, folder / path.name)
    gate = reg.gate_reason(parent) or "passed"
    reg.transition(version, GATED, run_id, f"quality gate inherited from {parent} (weights "
                   f"unchanged, catalogue refreshed): {gate}")  # fmt: skip
    return version


def derived_vectors(reg: Any, version: str, db_dir: Any, store: Any, item_ids: np.ndarray,
                    user_ids: np.ndarray, as_of: Any) -> tuple[np.ndarray, int]:  # fmt: skip
    """(N, D) float32 vectors of ``item_ids`` for a derived ``version``: the item tower's for
    the items its catalogue lists as new or changed (and any id its parent's table lacks),
    the parent's table's, unchanged, for every other one. Returns them and how many were
    computed. The new items' bias is levelled on the mean of ``user_ids`` as of ``as_of``
    (``with_unknown_item_bias``)."""
    from evaluation.version_outputs import version_item_vectors, with_unknown_item_bias

    info = reg.info(version)
    catalogue = info["catalogue"]
    table, meta = open_published(db_dir, info["derived_from"])
    parent = table.to_arrow()
    parent_ids = column_numpy(parent, ID_COLUMN).astype(np.int64)
    parent_vectors = vectors_numpy(parent, int(meta["dim"]))  # (P, D)
    ids = np.asarray(item_ids, dtype=np.int64)
    where = {int(i): n for n, i in enumerate(parent_ids.tolist())}
    positions = np.array([where.get(int(i), -1) for i in ids], dtype=np.int64)
    listed = np.union1d(catalogue.get("new_item_ids", []), catalogue.get("changed_item_ids", []))
    compute = np.isin(ids, listed) | (positions < 0)
    vectors = np.empty((ids.size, parent_vectors.shape[1]), dtype=np.float32)  # (N, D)
    vectors[~compute] = parent_vectors[positions[~compute]]
    if compute.any():
        fresh = version_item_vectors(reg, version, store, ids[compute], as_of)
        # New items levelled with the parent's table (its known items), or at the bias of
        # the items it never saw if it holds any, so that the copied vectors stay as they were.
        vectors[compute] = with_unknown_item_bias(reg, version, ids[compute], fresh, store,
                                                  user_ids, as_of, (parent_ids, parent_vectors))  # fmt: skip
    return vectors, int(compute.sum())
