"""Loading a fallback version (``recsys.fallback``): the baseline served when no two-tower
passed the quality gate. It has no towers; its item table holds each item's scores (global
popularity, then one column per profile segment for segment popularity), and
``Loaded.query`` returns ``[1]``, or the one-hot of the user's segment computed from the
feature row (the online features of a known user, the profile of a cold-start POST). The
same item search then ranks the catalogue by that score, each user's seen items (or a
cold-start request's recent items) excluded, exactly as for a two-tower version."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys import fallback
from recsys.features.online import ItemGenres
from recsys.index.search import SearchMode
from recsys.io import read_json
from recsys.settings import Paths
from serving.load import attribute_columns, open_index, source_key
from serving.loaded import Loaded, SeenItems, VersionLoadError

if TYPE_CHECKING:
    from recsys.objectstore import ArtifactStore

log = logging.getLogger(__name__)


def load_fallback(paths: Paths, version: str, info: dict[str, Any], search_mode: SearchMode,
                  hnsw_ef: int, started: float, folder: Path,
                  store: ArtifactStore | None = None) -> Loaded:  # fmt: skip
    """``version`` (a fallback, per its version.json ``info``, files in ``folder``) loaded
    whole and warmed up; ``started``: when ``serving.load.load_version`` began (for its load
    time); ``store``: where its item table is (None: the data folder)."""
    key = source_key(paths, version, store)
    dataset, features = Path(key[1]), Path(key[2])
    manifest = read_json(features / "manifest.json")
    as_of = pd.Timestamp(manifest["as_of"]).to_pydatetime()
    index = open_index(paths, version, search_mode, hnsw_ef, store)
    names = fallback.segments(folder)
    if index.dim != 1 + len(names):
        raise VersionLoadError(f"item table of fallback version {version} has {index.dim}-d "
                               f"vectors; its ranking has 1 + {len(names)} score columns")  # fmt: skip
    loaded = Loaded(
        version=version, model=None, tower=None, tower_kind=None, encoder=None, index=index,
        attributes=attribute_columns(index), rows=None,
        seen=SeenItems.from_parquet(dataset / "interactions.parquet", as_of),
        item_genres=ItemGenres.from_items(dataset / "items.parquet", manifest["genres"]),
        recent_items=int(manifest.get("recent_items", 20)), as_of=as_of, source=key,
        model_kind=str(info.get("baseline", "popularity")),
        fallback_query=segment_query(info.get("segment_fields"), names) if names else None,
    )  # fmt: skip
    loaded.recommend(None, {}, 10, np.empty(0, dtype=np.int64))  # warm-up, as for a model
    seconds = time.perf_counter() - started
    log.info("loaded fallback version %s (%s) in %.2fs: %s", version, loaded.model_kind,
             seconds, index)  # fmt: skip
    return replace(loaded, load_seconds=seconds)


def segment_query(fields: list[str] | None, names: list[str]) -> Callable[[dict[str, Any]], Any]:
    """A feature row's query for a segment popularity fallback: the one-hot (1 + S,) of its
    segment among ``names``, column 0 (global popularity) when unknown."""
    if not fields:
        raise VersionLoadError("a segment popularity fallback's version.json names no "
                               "segment_fields")  # fmt: skip
    return lambda row: fallback.queries([fallback.segment_label(row, fields)], names)[0]
