"""Loading one model version whole (``serving.loaded.Loaded``), ready for traffic.

Loading checks that the pieces agree before anything is served: the checkpoint of the
version named by ``current.json``, the published LanceDB table of that same version (its
name carries the version id), vector width = the tower's dimension + 1 (the bias column of
``towers.model.index_vectors``), and the feature manifest that says up to when the online
store and the seen-items map are filled (``as_of``).

With an artifact store (``recsys.objectstore``), the version's files come from the store,
downloaded once into the data folder's ``.artifact_cache/`` and checked against the
version's manifest, and its item table is opened on the store.

A two-tower version needs PyTorch (its checkpoint) and its encoder: both are imported in
:func:`load_version`, so that importing the server does not import torch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys import fallback
from recsys.features.online import Interaction, ItemGenres
from recsys.features.row_encoding import RowEncoder
from recsys.index.hnsw import HNSW_EF_SEARCH
from recsys.index.search import ItemIndex, SearchMode
from recsys.io import read_json
from recsys.objectstore import CorruptArtifact, VersionNotPublished
from recsys.registry import ModelRegistry
from recsys.settings import Paths
from serving.loaded import ITEM_FIELDS, Loaded, SeenItems, VersionLoadError
from serving.tower import load_user_tower

if TYPE_CHECKING:
    from recsys.objectstore import ArtifactStore

log = logging.getLogger(__name__)


def _tower_examples(rows: RowEncoder, item_ids: np.ndarray) -> list[dict[str, np.ndarray]]:
    """A few different rows the fast user towers are checked on before serving."""
    now = int(time.time())
    return [
        rows.arrays(None, {}),
        rows.arrays(None, {"age_bucket": "25-34", "gender": "F", "user_interaction_count": 3,
                           "user_mean_rating": 4.0, "user_genre_affinity": [0.5, 0.25],
                           "recent_item_ids": item_ids[:3].tolist(),
                           "recent_item_ratings": [5.0, float("nan"), 2.0],
                           "recent_item_timestamps": [now - 60, now - 86_400, now - 10**7]},
                    now),
        rows.arrays(next(iter(rows.users), None), {"recent_item_ids": item_ids[-40:].tolist()}),
    ]  # fmt: skip


def attribute_columns(index: ItemIndex) -> dict[str, list[Any]]:
    """The response's attribute columns of every item: each of ITEM_FIELDS, all None when
    the table has no such column (so every item of a response has every field)."""
    rows = index.attributes(index.item_ids)  # one Arrow conversion, at load time
    return {name: [row.get(name) for row in rows] for name in ITEM_FIELDS}


def source_key(
    paths: Paths, version: str, store: ArtifactStore | None = None
) -> tuple[str, str, str]:
    """What a loaded version depends on: the version and the published dataset and feature
    folders (each a symlink switched atomically by ``recsys.io.publish_dir``). A feature
    refresh publishes new folders, and the seen-items map is reloaded with them. With a
    ``store``, the folders published there (downloaded, verified), else the data folder's."""
    dataset, features = paths.dataset, paths.features
    if store is not None:
        try:
            dataset = store.fetch_folder("dataset", paths.artifact_cache) or dataset
            features = store.fetch_folder("features", paths.artifact_cache) or features
        except (VersionNotPublished, CorruptArtifact) as exc:
            raise VersionLoadError(str(exc)) from exc
    return (version, os.path.realpath(dataset), os.path.realpath(features))


def load_version(
    paths: Paths,
    version: str,
    search_mode: SearchMode = "auto",
    hnsw_ef: int = HNSW_EF_SEARCH,
    threads: int = 1,
    store: ArtifactStore | None = None,
) -> Loaded:
    """Load ``version`` whole (model, item index, seen items), check that the parts agree,
    and warm it up, so that the object is ready for traffic the moment it is swapped in.
    ``store``: the artifact store the version is published on (None: the data folder)."""
    started = time.perf_counter()
    key = source_key(paths, version, store)
    folder, info = version_folder(paths, version, store)
    checkpoint = folder / "checkpoint.pt"
    if info.get("state") == "rejected":
        raise VersionLoadError(f"model version {version} failed its quality gate")
    if fallback.is_fallback(info):
        from serving.fallback import load_fallback

        loaded = load_fallback(paths, version, info, search_mode, hnsw_ef, started, folder, store)
        return replace(loaded, catalogue=info.get("catalogue"))
    if not checkpoint.exists():
        raise VersionLoadError(f"model version {version} has no checkpoint in {folder}")
    from towers.checkpoint import load_checkpoint

    model, encoder, cfg = load_checkpoint(checkpoint)
    model.eval()
    # Through the resolved links: a feature refresh publishing meanwhile cannot mix folders.
    dataset, features = Path(key[1]), Path(key[2])
    manifest = read_json(features / "manifest.json")
    as_of = pd.Timestamp(manifest["as_of"]).to_pydatetime()
    recent_items = int(manifest.get("recent_items", encoder.history))
    seen = SeenItems.from_parquet(dataset / "interactions.parquet", as_of)
    index = open_index(paths, version, search_mode, hnsw_ef, store)
    if index.dim != cfg.dim + 1:
        raise VersionLoadError(
            f"item table of {version} has {index.dim}-d vectors; the checkpoint's towers "
            f"need {cfg.dim} + 1 (bias)"
        )
    rows = RowEncoder(encoder)
    tower, tower_kind = load_user_tower(
        model.user_tower, folder, _tower_examples(rows, index.item_ids), threads
    )
    loaded = Loaded(
        version=version,
        model=model,
        tower=tower,
        tower_kind=tower_kind,
        encoder=encoder,
        index=index,
        attributes=attribute_columns(index),
        rows=rows,
        seen=seen,
        item_genres=ItemGenres.from_items(dataset / "items.parquet", encoder.genres),
        recent_items=recent_items,
        as_of=as_of,
        source=key,
        catalogue=info.get("catalogue"),
        derived_from=info.get("derived_from"),
    )
    # Warm-up: the first forward pass and search pay one-off costs (allocations, lazy
    # initialisation); paid here, before the swap, not by the first request.
    warm = loaded.cold_row(
        age=30, gender=None, occupation=None, zip_code=None,
        recent=[Interaction(item) for item in index.item_ids[:3].tolist()],
    )  # fmt: skip
    loaded.recommend(None, warm, 10, np.empty(0, dtype=np.int64))
    seconds = time.perf_counter() - started
    loaded = replace(loaded, load_seconds=seconds)
    log.info(
        "loaded model version %s in %.2fs: %s, user tower in %s, %d users with %d seen items",
        version, seconds, index, tower_kind, loaded.seen.users.size, loaded.seen.interactions,
    )  # fmt: skip
    return loaded


def version_folder(
    paths: Paths, version: str, store: ArtifactStore | None
) -> tuple[Path, dict[str, Any]]:
    """The local folder of ``version`` and its version.json (with its ``state`` when the
    registry is local: a version on the store was published, so never rejected)."""
    if store is not None:
        try:
            folder = store.fetch_version(version, paths.artifact_cache)
        except (VersionNotPublished, CorruptArtifact) as exc:
            raise VersionLoadError(str(exc)) from exc
        return folder, dict(read_json(folder / "version.json"))
    registry = ModelRegistry(paths.models)
    folder = registry.path(version)
    if not (folder / "version.json").exists():
        raise VersionLoadError(f"model version {version} has no complete folder in {folder}")
    return folder, registry.info(version)


def open_index(paths: Paths, version: str, search_mode: SearchMode, hnsw_ef: int,
               store: ArtifactStore | None = None) -> ItemIndex:  # fmt: skip
    """The version's published item table: in the data folder, or on ``store`` (its HNSW
    graph kept in the artifact cache)."""
    try:
        if store is not None:
            return ItemIndex.open(store.lancedb_uri, version, mode=search_mode, hnsw_ef=hnsw_ef,
                                  storage_options=store.storage_options,
                                  graph_dir=paths.artifact_cache)  # fmt: skip
        return ItemIndex.open(paths.lancedb, version, mode=search_mode, hnsw_ef=hnsw_ef)
    except (FileNotFoundError, LookupError) as exc:
        raise VersionLoadError(f"item table of version {version}: {exc}") from exc
