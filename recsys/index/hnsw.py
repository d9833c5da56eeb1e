"""The in-memory HNSW graph that serves large catalogues, and its cache on disk.

A faiss ``IndexHNSWFlat`` (M=32, efConstruction 80) over the item vectors after the
MIPS-to-L2 transform (:func:`mips_to_l2`), so that nearest neighbours in L2 are the largest
dot products. ``write_item_table`` builds the graph before publishing (from
``HNSW_MIN_ROWS`` rows) and keeps it in ``db_dir/.hnsw/<version>@<table version>.faiss``;
``ItemIndex.open`` reads it, or rebuilds it when it is missing or unreadable. The measurements
behind the settings are in :mod:`recsys.index.search`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

# "auto" picks the matrix below this many rows and the in-memory HNSW graph from here on (in
# memory, i.e. within MATRIX_BUDGET_FLOATS). Measured crossover: see recsys.index.search.
HNSW_MIN_ROWS = 50_000
# The in-memory graph (faiss IndexHNSWFlat over the MIPS-to-L2 transformed vectors).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# Search breadth (per query: at least k): recall against speed, see recsys.index.search.
HNSW_EF_SEARCH = 256
# Built graphs are kept in this folder of the LanceDB directory, one file per table version.
HNSW_DIR = ".hnsw"

log = logging.getLogger(__name__)


def mips_to_l2(vectors: np.ndarray) -> np.ndarray:
    """Item vectors x -> [x, sqrt(R^2 - |x|^2)] with R the largest norm (Bachrach et al.,
    RecSys 2014): with queries [u, 0], |q - x'|^2 = |u|^2 + R^2 - 2 u.x, so the nearest
    neighbours in L2 are exactly the largest dot products. A graph built on the raw dot
    product (not a metric: an item need not be its own best match) misses many of them."""
    norms2 = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0))
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def graph_path(db_dir: Path, version: str, table_version: int) -> Path:
    """Where the graph of one table version is kept: a rewrite gets a new file."""
    return Path(db_dir) / HNSW_DIR / f"{version}@{table_version}.faiss"


def load_or_build(vectors: np.ndarray, cache: Path | None) -> Any:
    """The HNSW graph over ``vectors`` (row i = position i), read from ``cache`` when a
    matching one is there, else built and written there (temp file, then rename)."""
    rows, dim = vectors.shape
    if cache is not None and cache.exists():
        try:
            index = faiss.read_index(str(cache))
            if index.ntotal == rows and index.d == dim + 1:
                return index
            log.warning("ignoring %s: %d x %d, want %d x %d", cache, index.ntotal, index.d,
                        rows, dim + 1)  # fmt: skip
        except RuntimeError as exc:  # truncated or not a faiss file
            log.warning("ignoring unreadable %s: %s", cache, exc)
    index = faiss.IndexHNSWFlat(dim + 1, HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(mips_to_l2(vectors))
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            faiss.write_index(index, str(tmp))
            os.replace(tmp, cache)
        except (OSError, RuntimeError) as exc:  # a read-only folder: serve, rebuild next time
            log.warning("could not keep the HNSW graph in %s: %s", cache, exc)
            tmp.unlink(missing_ok=True)
    return index


def drop_graphs(db_dir: Path, version: str) -> None:
    """Delete every kept graph of ``version`` (all its table versions)."""
    for graph in (Path(db_dir) / HNSW_DIR).glob(f"{version}@*.faiss"):
        graph.unlink(missing_ok=True)
