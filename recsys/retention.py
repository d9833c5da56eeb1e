"""Retention of model versions: keep what serving may load and the last few, delete the rest.

After a promotion the registry keeps the current version, the previous one (serving may
still hold it, and it is the rollback target) and the ``keep`` newest versions by creation;
every other finished version (``rejected`` or ``retired``) is deleted whole: its folder
(checkpoint, ONNX graph, metrics, candidates), its state file, its LanceDB table
``items_<version>`` and its HNSW graph cache. LanceDB tables of versions the registry no
longer knows (a run killed while writing vectors) go too. A version still in progress
(staged, gated, embedded) is never touched here.

With an artifact store (the registry's ``store``), a deleted version goes from the store too
(manifest first, so it disappears whole; then its files and its table), and so do the
store's versions and tables the registry no longer knows (a publication killed half-way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recsys.registry import REJECTED, RETIRED, ModelRegistry


@dataclass
class Retention:
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # versions removed with their table
    orphan_tables: list[str] = field(default_factory=list)  # tables of unknown versions
    orphan_store_versions: list[str] = field(default_factory=list)  # on the store only


def apply_retention(registry: ModelRegistry, lancedb_dir: Path, keep: int) -> Retention:
    """Delete the versions outside current, previous and the ``keep`` newest (see above)."""
    from recsys.index.table import drop_item_table, list_versions

    if keep < 0:
        raise ValueError(f"keep_versions must be >= 0, got {keep}")
    known = sorted(set(registry.versions()) | set(registry.recorded()))
    pinned = {v for v in (registry.current(), registry.previous()) if v}
    # max(0, ...): with fewer versions than keep, a negative start would keep only the last.
    newest = set(known[max(0, len(known) - keep) :]) if keep else set()
    result = Retention(kept=sorted(pinned | newest))
    for version in known:
        if version in pinned or version in newest:
            continue
        if registry.state(version) not in (REJECTED, RETIRED, None):
            result.kept.append(version)  # in progress: not retention's to judge
            continue
        drop_item_table(lancedb_dir, version)
        if registry.store is not None:
            registry.store.delete_version(version)
        registry.forget(version, f"retention: outside current, previous and the last {keep}")
        result.deleted.append(version)
    for version in list_versions(lancedb_dir, include_unpublished=True):
        if version not in known:
            drop_item_table(lancedb_dir, version)
            result.orphan_tables.append(version)
    if registry.store is not None:
        store = registry.store
        on_store = set(store.versions(include_incomplete=True))
        on_store |= set(store.table_versions(include_unpublished=True))
        for version in sorted(on_store - set(known)):
            store.delete_version(version)
            result.orphan_store_versions.append(version)
    result.kept.sort()
    return result
