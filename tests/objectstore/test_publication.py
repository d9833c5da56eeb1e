"""Publication of model versions on an S3-compatible store (recsys.objectstore), against a
real local S3 server: a version is visible whole or not at all, the pointer moves only to a
complete one, downloads are checked, retention deletes on the store too."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.index.search import ItemIndex
from recsys.index.table import write_item_table
from recsys.io import publish_dir, staging_dir
from recsys.objectstore import (
    MANIFEST,
    ArtifactStore,
    CorruptArtifact,
    VersionNotPublished,
    artifact_store,
)
from recsys.registry import EMBEDDED, GATED, ModelRegistry, TransitionError
from recsys.retention import apply_retention
from recsys.settings import Settings


def embedded_version(reg: ModelRegistry, lancedb: Path, seed: int) -> tuple[str, str]:
    """A small version (a few files, one in a subfolder) with its local item table, in state
    ``embedded``; returns (version, builder run id)."""
    rng = np.random.default_rng(seed)
    run = str(uuid.uuid4())
    version = reg.new_version(f"{seed:08d}")
    with reg.build(version, run, {"fingerprint": str(seed)}) as folder:
        (folder / "checkpoint.pt").write_bytes(rng.bytes(50_000))
        (folder / "metrics.json").write_text(json.dumps({"seed": seed}))
        (folder / "plots").mkdir()
        (folder / "plots" / "curve.png").write_bytes(rng.bytes(1_000))
    reg.transition(version, GATED, run, "test")
    ids = np.arange(1, 41, dtype=np.int64)
    write_item_table(lancedb, version, ids, rng.normal(size=(40, 5)).astype(np.float32))
    reg.transition(version, EMBEDDED, run, "test")
    return version, run


def test_publish_then_fetch_verified(store: ArtifactStore, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", store=store)
    version, _ = embedded_version(reg, tmp_path / "lancedb", seed=1)
    manifest = store.publish(reg.path(version), tmp_path / "lancedb", version)
    assert sorted(manifest["files"]) == [
        "checkpoint.pt", "metrics.json", "plots/curve.png", "version.json"
    ]  # fmt: skip
    assert store.versions() == [version]
    folder = store.fetch_version(version, tmp_path / "cache")
    for name in manifest["files"]:
        assert (folder / name).read_bytes() == (reg.path(version) / name).read_bytes()
    # The store's table is the local one, searched the same way.
    local = ItemIndex.open(tmp_path / "lancedb", version, mode="matrix")
    remote = ItemIndex.open(store.lancedb_uri, version, mode="matrix",
                            storage_options=store.storage_options)  # fmt: skip
    np.testing.assert_array_equal(remote.item_ids, local.item_ids)
    np.testing.assert_array_equal(remote.vectors, local.vectors)
    # Publishing again is a no-op (versions are written once).
    assert store.publish(reg.path(version), tmp_path / "lancedb", version) == manifest


def test_download_refuses_an_object_that_differs_from_its_manifest(
    store: ArtifactStore, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "models")
    version, _ = embedded_version(reg, tmp_path / "lancedb", seed=2)
    store.publish_version(reg.path(version), version)
    body = (reg.path(version) / "checkpoint.pt").read_bytes()
    tampered = body[:-1] + bytes([body[-1] ^ 1])  # same size, another hash
    store.put_bytes(store.version_key(version, "checkpoint.pt"), tampered)
    with pytest.raises(CorruptArtifact, match="checkpoint.pt"):
        store.fetch_version(version, tmp_path / "cache")
    assert not (tmp_path / "cache" / "versions" / version).exists()
    store.put_bytes(store.version_key(version, "metrics.json"), b"{}")  # another size
    store.put_bytes(store.version_key(version, "checkpoint.pt"), body)
    with pytest.raises(CorruptArtifact, match="metrics.json"):
        store.fetch_version(version, tmp_path / "cache")


def test_publication_killed_half_way_leaves_nothing_visible(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ModelRegistry(tmp_path / "models", store=store)
    lancedb = tmp_path / "lancedb"
    first, run1 = embedded_version(reg, lancedb, seed=3)
    store.publish(reg.path(first), lancedb, first)
    reg.promote(first, run1)
    pointer = store.pointer()
    assert pointer is not None and pointer["version"] == first

    second, run2 = embedded_version(reg, lancedb, seed=4)
    uploads: list[str] = []
    upload = store.upload_file

    def dies_after_two(path: Path, key: str) -> None:
        if len(uploads) == 2:
            raise KeyboardInterrupt("killed")
        upload(path, key)
        uploads.append(key)

    monkeypatch.setattr(store, "upload_file", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        store.publish(reg.path(second), lancedb, second)
    monkeypatch.undo()
    # Two files are on the store, but no manifest: absent to every reader.
    assert len(list(store.keys(store.version_key(second) + "/"))) == 2
    assert store.manifest(second) is None and store.versions() == [first]
    with pytest.raises(VersionNotPublished):
        store.fetch_version(second, tmp_path / "cache")
    # The pointer cannot move to it, and the local switch is refused with it.
    with pytest.raises(VersionNotPublished):
        reg.promote(second, run2)
    assert store.pointer() == pointer and reg.current() == first
    assert reg.state(second) == EMBEDDED
    # A later publication completes it; the switch then moves both pointers.
    store.publish(reg.path(second), lancedb, second)
    assert reg.promote(second, run2) == first
    assert store.current() == second == reg.current()
    local = json.loads((reg.root / "current.json").read_text())
    assert store.pointer() == local
    assert len(list(store.keys(store.key("models", "promotions") + "/"))) == 2


def test_pointer_needs_the_item_table_on_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", store=store)
    version, run = embedded_version(reg, tmp_path / "lancedb", seed=5)
    store.publish_version(reg.path(version), version)  # files and manifest, no table
    with pytest.raises(VersionNotPublished, match="item table"):
        reg.promote(version, run)
    assert store.current() is None and reg.current() is None
    store.publish_table(tmp_path / "lancedb", version)
    reg.promote(version, run)
    assert store.current() == version


def test_a_lagging_store_catches_up(store: ArtifactStore, tmp_path: Path) -> None:
    """A store set on a data folder whose current version it lacks (or a run killed between
    the local switch and the store's): the next promotion step publishes it whole."""
    data = tmp_path / "data"
    for name in ("dataset", "features"):
        with staging_dir(data, name) as staging:
            (staging / "manifest.json").write_text("{}")
            publish_dir(staging, data / name)
    local_only = ModelRegistry(data / "models")
    version, run = embedded_version(local_only, data / "lancedb", seed=6)
    local_only.promote(version, run)
    assert store.current() is None
    paths = Settings(data_dir=data).paths
    assert store.publish_current(local_only, data / "lancedb", paths)
    assert store.current() == version and store.versions() == [version]
    assert store.fetch_folder("features", tmp_path / "cache") is not None
    assert not store.publish_current(local_only, data / "lancedb", paths)


def test_retention_deletes_on_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models", store=store)
    lancedb = tmp_path / "lancedb"
    versions = []
    for seed in (10, 11, 12):
        version, run = embedded_version(reg, lancedb, seed)
        store.publish(reg.path(version), lancedb, version)
        reg.promote(version, run)
        versions.append(version)
    # Files of a killed publication of a version the registry does not know.
    store.put_bytes(store.version_key("20000101T000000000000-deadbeef", "checkpoint.pt"), b"x")
    result = apply_retention(reg, lancedb, keep=0)
    assert result.deleted == [versions[0]]
    assert result.orphan_store_versions == ["20000101T000000000000-deadbeef"]
    assert store.versions(include_incomplete=True) == versions[1:]
    assert store.table_versions(include_unpublished=True) == versions[1:]
    assert list(store.keys(store.version_key(versions[0]) + "/")) == []
    assert store.current() == versions[2]


def test_published_folders_follow_the_data_folders_links(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """The dataset a version serves with: published whole, downloaded when its link moves."""
    data = tmp_path / "data"
    assert store.fetch_folder("dataset", tmp_path / "cache") is None
    ids = []
    for rows in (3, 5):
        with staging_dir(data, "dataset") as staging:
            pd.DataFrame({"user_id": range(rows)}).to_parquet(staging / "users.parquet")
            publish_dir(staging, data / "dataset")
        ids.append(store.publish_folder(data / "dataset", "dataset"))
        copy = store.fetch_folder("dataset", tmp_path / "cache")
        assert copy is not None and copy.name == ids[-1] == (data / "dataset").resolve().name
        assert len(pd.read_parquet(copy / "users.parquet")) == rows
    assert ids[0] != ids[1]
    key = store.folder_key("dataset", ids[1])
    store.put_bytes(f"{key}/users.parquet", b"not parquet")
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(CorruptArtifact, match="users.parquet"):
        store.fetch_folder("dataset", tmp_path / "cache")


def test_settings_name_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    assert artifact_store(Settings(data_dir=tmp_path)) is None
    named = artifact_store(
        Settings(data_dir=tmp_path, artifact_store=store.url, s3_endpoint_url=store.endpoint_url)
    )
    assert named is not None and (named.bucket, named.prefix) == (store.bucket, "recsys")
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, artifact_store="/a/folder")


def test_a_version_without_store_is_refused_nowhere(tmp_path: Path) -> None:
    """Without a store the registry switches as before and writes nothing else."""
    reg = ModelRegistry(tmp_path / "models")
    version, run = embedded_version(reg, tmp_path / "lancedb", seed=7)
    reg.promote(version, run)
    assert reg.current() == version and reg.store is None
    with pytest.raises(TransitionError):
        reg.promote(version, run)
    assert not (tmp_path / "models" / "versions" / version / MANIFEST).exists()
