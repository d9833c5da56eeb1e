"""Model versions, their item tables and the registry's pointer on an S3-compatible store.

The data folder stays the working copy: runs build, gate and embed a version there
(``recsys.registry``). With ``Settings.artifact_store`` set (``s3://bucket/prefix``), the
promotion also *publishes* the version to the store, where serving replicas on other hosts
find it. Layout under the prefix::

    models/versions/<v>/...            every file of the local versions/<v>/ folder
    models/versions/<v>/_manifest.json {"version", "files": {name: {"size", "sha256"}}}
    models/current.json                the pointer: the local current.json, one PUT
    models/promotions/<at>-<v>.json    one object per switch (S3 has no append)
    lancedb/items_<v>.lance            the version's LanceDB table, tagged when complete
    data/<name>/<id>/...               a published folder of the data folder (dataset,
                                       features: what the version serves with), <id> the
                                       name of the folder its link points at (recsys.io)
    data/<name>/<id>/_manifest.json    written last, as for a version
    data/<name>/current.json           {"id"}: the published one, one PUT after its manifest

A version is visible whole or not at all: its files are uploaded first and the manifest
last, and a version without a manifest is absent to every reader (a publication killed
half-way leaves files nobody reads, overwritten by the next attempt). Downloads are checked
against the manifest's sizes and SHA-256. The pointer moves only to a version whose manifest
and published table are on the store, in one PUT (atomic on S3). Deletion goes the other way:
manifest first, so the version disappears whole, then its files and its table.

Credentials come from boto3's chain (AWS_* variables, ~/.aws, instance roles); LanceDB is
handed the ones boto3 resolved, so both clients use the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recsys.io import atomic_write_json, read_json
from recsys.registry import ModelRegistry, check_version
from recsys.settings import Paths, Settings

MANIFEST = "_manifest.json"
CHUNK = 1 << 20
# The data folder's published folders a served version needs (seen items, items, as_of).
SERVED_FOLDERS = ("dataset", "features")
KEEP_DOWNLOADS = 2  # downloaded copies kept per kind: the served one and the one before


class VersionNotPublished(LookupError):
    """The store holds no complete version (no manifest), or not its item table."""


class CorruptArtifact(ValueError):
    """A downloaded file differs from its manifest (size or SHA-256)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_manifest(folder: Path, version: str) -> dict[str, Any]:
    """The manifest of a local version folder: every file's size and SHA-256."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size,
                                              "sha256": sha256_file(path)}
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }  # fmt: skip
    return {"version": version, "files": files}


def _prune(parent: Path, keep: Path) -> None:
    """Delete downloaded copies under ``parent`` but ``keep`` and the newest others, up to
    KEEP_DOWNLOADS in all (a worker may still be loading the previous one)."""
    others = sorted((p for p in parent.iterdir() if p.is_dir() and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)  # fmt: skip
    for old in others[KEEP_DOWNLOADS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def artifact_store(settings: Settings) -> ArtifactStore | None:
    """The store ``settings`` name, or None when artifacts stay in the data folder."""
    if settings.artifact_store is None:
        return None
    return ArtifactStore(settings.artifact_store, settings.s3_endpoint_url, settings.s3_region)


class ArtifactStore:
    """One ``s3://bucket/prefix`` (see the module docstring), through boto3."""

    def __init__(self, url: str, endpoint_url: str | None = None,
                 region: str | None = None) -> None:  # fmt: skip
        import boto3

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"artifact store must be s3://bucket[/prefix], got {url!r}")
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint_url = endpoint_url
        session = boto3.session.Session()
        self.region = region or session.region_name or "us-east-1"
        self.client = session.client("s3", endpoint_url=endpoint_url, region_name=self.region)
        self._credentials = session.get_credentials()

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"ArtifactStore({self.url!r}{where})"

    # --- objects ----------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return bytes(response["Body"].read())

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (a folder: give it its trailing slash)."""
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield str(item["Key"])

    def folders(self, prefix: str) -> list[str]:
        """The names of the "folders" directly under ``prefix`` (which ends with a slash)."""
        pages = self.client.get_paginator("list_objects_v2")
        names = []
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(str(common["Prefix"])[len(prefix) :].rstrip("/"))
        return sorted(names)

    def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def upload_file(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, key)

    # --- LanceDB ----------------------------------------------------------------------
    @property
    def lancedb_uri(self) -> str:
        return f"s3://{self.bucket}/{self.key('lancedb')}"

    @property
    def storage_options(self) -> dict[str, str]:
        """LanceDB's object store options: endpoint, region, and boto3's credentials."""
        options = {"aws_region": self.region}
        if self.endpoint_url:
            options["aws_endpoint"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["allow_http"] = "true"
        if self._credentials is not None:
            frozen = self._credentials.get_frozen_credentials()
            options["aws_access_key_id"] = frozen.access_key
            options["aws_secret_access_key"] = frozen.secret_key
            if frozen.token:
                options["aws_session_token"] = frozen.token
        return options

    def publish_table(self, db_dir: Path, version: str) -> None:
        """Copy the published local item table of ``version`` to the store (tagged last, as
        ``write_item_table`` does); nothing when the store's is already published."""
        from recsys.index.table import (
            ID_COLUMN,
            VECTOR_COLUMN,
            column_numpy,
            list_versions,
            open_published,
            vectors_numpy,
            write_item_table,
        )

        if version in self.table_versions():
            return
        table, meta = open_published(db_dir, version)
        data = table.to_arrow()
        write_item_table(
            self.lancedb_uri, version,
            column_numpy(data, ID_COLUMN).astype("int64"),
            vectors_numpy(data, int(meta["dim"])),
            data.drop_columns([ID_COLUMN, VECTOR_COLUMN]),
            storage_options=self.storage_options,
        )  # fmt: skip
        if version not in list_versions(self.lancedb_uri, storage_options=self.storage_options):
            raise VersionNotPublished(f"item table of {version} not published on {self}")

    def table_versions(self, include_unpublished: bool = False) -> list[str]:
        from recsys.index.table import list_versions

        return list_versions(self.lancedb_uri, include_unpublished=include_unpublished,
                             storage_options=self.storage_options)  # fmt: skip

    # --- model versions ---------------------------------------------------------------
    def version_key(self, version: str, name: str = "") -> str:
        return self.key("models", "versions", check_version(version), name)

    def manifest(self, version: str) -> dict[str, Any] | None:
        """The version's manifest, or None: a version without one is absent."""
        raw = self.get_bytes(self.version_key(version, MANIFEST))
        return None if raw is None else dict(json.loads(raw))

    def versions(self, include_incomplete: bool = False) -> list[str]:
        """Complete versions on the store (those with a manifest), oldest first;
        ``include_incomplete`` adds the files of publications killed before their manifest."""
        folders = self.folders(self.key("models", "versions") + "/")
        return [v for v in folders if include_incomplete or self.manifest(v) is not None]

    def publish_version(self, folder: Path, version: str) -> dict[str, Any]:
        """Upload every file of the local version ``folder``, then its manifest (the commit
        point). A version already on the store with the same files is left as it is."""
        manifest = folder_manifest(folder, version)
        published = self.manifest(version)
        if published is not None and published["files"] == manifest["files"]:
            return published
        if published is not None:
            raise ValueError(f"version {version} on {self} has other files: versions are "
                             "written once")  # fmt: skip
        for name in manifest["files"]:
            self.upload_file(Path(folder) / name, self.version_key(version, name))
        manifest["published_at"] = datetime.now(UTC).isoformat()
        self.put_bytes(self.version_key(version, MANIFEST),
                       json.dumps(manifest, indent=2, sort_keys=True).encode())  # fmt: skip
        return manifest

    def publish(self, folder: Path, db_dir: Path, version: str) -> dict[str, Any]:
        """Publish a version whole: its files and manifest, then its item table. Its
        pointer is moved by the registry's switch (``write_pointer``)."""
        manifest = self.publish_version(folder, version)
        self.publish_table(db_dir, version)
        return manifest

    def fetch_version(self, version: str, cache: Path) -> Path:
        """The store's ``version`` as a local folder ``cache/versions/<v>``, downloaded and
        checked against its manifest (sizes, SHA-256) the first time."""
        manifest = self.manifest(version)
        if manifest is None:
            raise VersionNotPublished(f"version {version} is not published on {self}")
        target = Path(cache) / "versions" / version
        return self._download(self.version_key(version), manifest, target, Path(cache))

    def _download(self, key: str, manifest: dict[str, Any], target: Path, cache: Path) -> Path:
        """The files of ``manifest`` under ``key`` into ``target``: into a staging folder,
        each checked, renamed into place only once every file is verified."""
        if (target / MANIFEST).exists() and read_json(target / MANIFEST) == manifest:
            return target
        staging = cache / ".staging" / f"{target.name}-{uuid.uuid4().hex[:12]}"
        try:
            for name, expected in manifest["files"].items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, f"{key}/{name}", str(path))
                size, digest = path.stat().st_size, sha256_file(path)
                if size != expected["size"] or digest != expected["sha256"]:
                    raise CorruptArtifact(
                        f"{key}/{name} from {self}: {size} bytes, sha256 {digest[:12]}; "
                        f"manifest: {expected['size']} bytes, sha256 {expected['sha256'][:12]}"
                    )
            atomic_write_json(staging / MANIFEST, manifest)
            shutil.rmtree(target, ignore_errors=True)  # a stale or partial copy
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, target)
            except OSError:  # another process (a second worker) put it there meanwhile
                if not ((target / MANIFEST).exists() and read_json(target / MANIFEST) == manifest):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _prune(target.parent, target)
        return target

    # --- published folders of the data folder -----------------------------------------
    def folder_key(self, name: str, folder_id: str = "") -> str:
        return self.key("data", check_version(name), folder_id and check_version(folder_id))

    def publish_folder(self, link: Path, name: str) -> str:
        """Publish the folder a data folder link (``recsys.io.publish_dir``) points at as
        ``data/<name>/<id>``: files, manifest, then the pointer. Returns its id."""
        real = Path(link).resolve()
        folder_id = check_version(real.name)
        key = self.folder_key(name, folder_id)
        manifest = folder_manifest(real, folder_id)
        if self.get_bytes(f"{key}/{MANIFEST}") is None:
            for file in manifest["files"]:
                self.upload_file(real / file, f"{key}/{file}")
            self.put_bytes(f"{key}/{MANIFEST}", json.dumps(manifest, sort_keys=True).encode())
        self.put_bytes(f"{self.folder_key(name)}/current.json",
                       json.dumps({"id": folder_id}).encode())  # fmt: skip
        return folder_id

    def publish_served_folders(self, paths: Paths) -> dict[str, str]:
        """Publish the dataset and feature folders serving reads; {name: id}."""
        return {name: self.publish_folder(getattr(paths, name), name) for name in SERVED_FOLDERS}

    def fetch_folder(self, name: str, cache: Path) -> Path | None:
        """The published ``name`` folder as a verified local copy under ``cache/data/<name>``,
        downloaded when it changed; None when the store has none."""
        raw = self.get_bytes(f"{self.folder_key(name)}/current.json")
        if raw is None:
            return None
        folder_id = check_version(str(json.loads(raw)["id"]))
        key = self.folder_key(name, folder_id)
        manifest_raw = self.get_bytes(f"{key}/{MANIFEST}")
        if manifest_raw is None:
            raise VersionNotPublished(f"{key} on {self} has no manifest")
        target = Path(cache) / "data" / name / folder_id
        return self._download(key, dict(json.loads(manifest_raw)), target, Path(cache))

    def delete_version(self, version: str) -> None:
        """Delete a version: its manifest first (it disappears whole), then its files and
        its item table."""
        from recsys.index.table import drop_item_table

        self.delete_keys([self.version_key(version, MANIFEST)])
        self.delete_keys(list(self.keys(self.version_key(version) + "/")))
        drop_item_table(self.lancedb_uri, version, self.storage_options)

    # --- the pointer ------------------------------------------------------------------
    def check_publishable(self, version: str) -> None:
        """Raise VersionNotPublished unless ``version``'s manifest and table are on the store."""
        if self.manifest(version) is None:
            raise VersionNotPublished(f"version {version} has no manifest on {self}")
        if version not in self.table_versions():
            raise VersionNotPublished(f"version {version} has no published item table on {self}")

    def write_pointer(self, pointer: dict[str, Any]) -> None:
        """Point the store at ``pointer["version"]`` (the local current.json's content) in
        one PUT, once its manifest and table are there; then log the switch."""
        version = str(pointer["version"])
        self.check_publishable(version)
        body = json.dumps(pointer, indent=2, sort_keys=True).encode()
        self.put_bytes(self.key("models", "current.json"), body)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.put_bytes(self.key("models", "promotions", f"{stamp}-{version}.json"), body)

    def publish_current(self, registry: ModelRegistry, db_dir: Path, paths: Paths) -> bool:
        """Publish the registry's current version and point the store at it when the store's
        pointer names another: a store newly set on a data folder, or a run killed between
        the local switch and the store's. Returns whether it did."""
        current = registry.current()
        if current is None or self.current() == current:
            return False
        self.publish_served_folders(paths)
        self.publish(registry.path(current), db_dir, current)
        self.write_pointer(dict(read_json(registry.root / "current.json")))
        return True

    def pointer(self) -> dict[str, Any] | None:
        raw = self.get_bytes(self.key("models", "current.json"))
        return None if raw is None else dict(json.loads(raw))

    def current(self) -> str | None:
        """The version the store's pointer names (what replicas serve), or None."""
        pointer = self.pointer()
        return None if pointer is None else str(pointer["version"])
