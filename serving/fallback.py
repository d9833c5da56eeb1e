"""Loading a fallback version (``recsys.fallback``): the baseline served when no two-tower
passed the quality gate. It has no towers; its item table holds each item's score as a
one-dimensional vector, so ``Loaded.query`` returns ``[1]`` and the same item search ranks
the catalogue by score, each user's seen items (or a cold-start request's recent items)
excluded, exactly as for a two-tower version."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.io import read_json
from recsys.settings import Paths
from recsys.vectors import SearchMode
from serving.features import ItemGenres
from serving.loaded import (
    Loaded,
    SeenItems,
    VersionLoadError,
    attribute_columns,
    open_index,
    source_key,
)

log = logging.getLogger(__name__)


def load_fallback(paths: Paths, version: str, info: dict[str, Any], search_mode: SearchMode,
                  hnsw_ef: int, started: float) -> Loaded:  # fmt: skip
    """``version`` (a fallback, per its version.json ``info``) loaded whole and warmed up;
    ``started``: when ``serving.loaded.load_version`` began (for its load time)."""
    key = source_key(paths, version)
    dataset, features = Path(key[1]), Path(key[2])
    manifest = read_json(features / "manifest.json")
    as_of = pd.Timestamp(manifest["as_of"]).to_pydatetime()
    index = open_index(paths, version, search_mode, hnsw_ef)
    if index.dim != 1:
        raise VersionLoadError(f"item table of fallback version {version} has {index.dim}-d "
                               "vectors; a fallback's are one-dimensional (the item's score)")  # fmt: skip
    loaded = Loaded(
        version=version, model=None, tower=None, tower_kind=None, encoder=None, index=index,
        attributes=attribute_columns(index), rows=None,
        seen=SeenItems.from_parquet(dataset / "interactions.parquet", as_of),
        item_genres=ItemGenres.from_items(dataset / "items.parquet", manifest["genres"]),
        recent_items=int(manifest.get("recent_items", 20)), as_of=as_of, source=key,
        model_kind=str(info.get("baseline", "popularity")),
    )  # fmt: skip
    loaded.recommend(None, {}, 10, np.empty(0, dtype=np.int64))  # warm-up, as for a model
    seconds = time.perf_counter() - started
    log.info("loaded fallback version %s (%s) in %.2fs: %s", version, loaded.model_kind,
             seconds, index)  # fmt: skip
    return replace(loaded, load_seconds=seconds)
