"""Top-k item search over one published model version: the matrix, the HNSW graph or LanceDB.

Search modes (:meth:`ItemIndex.open`):

* ``"matrix"``: the vectors are held in memory as an (N, d) float32 array; a query is
  ``vectors @ u`` plus ``np.argpartition``. Exact.
* ``"hnsw"``: the same in-memory vectors plus a faiss HNSW graph (M=32, efConstruction 80,
  efSearch 256 or ``hnsw_ef``) over them after the MIPS-to-L2 transform (``_mips_to_l2``);
  excluded ids are skipped inside the graph walk (faiss ``IDSelectorNot``), and the scores
  are recomputed from the vectors exactly as the matrix computes them. ``write_item_table``
  builds the graph before publishing (from ``HNSW_MIN_ROWS`` rows) and keeps it in
  ``db_dir/.hnsw/<version>@<table version>.faiss``; opening reads it, or rebuilds it when it
  is missing or unreadable.
* ``"lance"``: LanceDB search on the pinned version (ANN if indexed, else flat), over-fetching
  ``k + len(exclude)`` rows, then filtering and re-scoring in NumPy.
* ``"auto"``: lance only when the table has an ANN index and ``rows * dim`` exceeds
  ``MATRIX_BUDGET_FLOATS`` (32M floats = 128 MB, 500K items at d=64); otherwise in memory:
  matrix below ``HNSW_MIN_ROWS`` (50K) rows, hnsw from there.

Why (``benchmarks/bench_vectors.py --sizes 1682 50000 100000``: random unit vectors, d=64,
top-20 with 20 excluded ids, 2,000 queries, one thread, load average ~1.6 on 2 CPUs; build
of hnsw = table + graph):

    N        mode               build s  p50 ms  p95 ms  p99 ms  recall@20
    1,682    lance flat            0.02    6.21    7.96    9.22      1.000
    1,682    lance IVF_HNSW_SQ     0.31    7.47    9.42   12.71      1.000
    1,682    matrix                0.02    0.09    0.13    0.24      1.000
    1,682    hnsw                  0.20    0.48    0.55    1.01      1.000
    50,000   lance flat            0.09   28.44   34.93   39.04      1.000
    50,000   lance IVF_HNSW_SQ    19.36   20.45   26.48   30.85      0.997
    50,000   matrix                0.09    1.88    2.67    3.16      1.000
    50,000   hnsw                 21.69    2.08    2.64    3.29      0.983
    100,000  lance flat            0.16   48.72   65.36   74.04      1.000
    100,000  lance IVF_HNSW_SQ    43.15   24.30   29.38   32.77      0.994
    100,000  matrix                0.16    4.08    5.59    6.17      1.000
    100,000  hnsw                 63.98    2.28    3.07    3.50      0.956

LanceDB has a floor of ~6 ms per query (query planning, Arrow round trip) even at 1.7K
rows; the matrix is exact and grows linearly with the rows. Random vectors are the hard case
for a graph (no clusters to follow): on the 100K catalogue of ``benchmarks/bench_serving.py``
(a trained version's vectors plus noisy copies, each user's seen items excluded) the graph
answers in 0.53 ms p50 with recall@20 1.000 against the matrix's 5.7 ms. So in memory the
matrix serves below 50K rows (exact, as fast) and the graph from there; beyond
``MATRIX_BUDGET_FLOATS`` LanceDB's ANN index (a flat LanceDB scan is always slower than
the matrix).

Exclusion (already-seen items) never puts client input into a SQL filter: ids are removed
in NumPy after over-fetching (lance), masked to ``-inf`` (matrix) or skipped in the graph
walk (hnsw).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pyarrow as pa

from recsys.index.hnsw import HNSW_EF_SEARCH, HNSW_MIN_ROWS, graph_path, load_or_build
from recsys.index.table import (
    ID_COLUMN,
    METRIC,
    VECTOR_COLUMN,
    DbLocation,
    column_numpy,
    graph_root,
    open_published,
    vectors_numpy,
)

# Search-time settings of the HNSW index; every IVF partition is probed (there are few).
# recall@20 0.993 vs exact on 100K random normalised 64-d vectors (0.970 without refining).
ANN_EF = 100
ANN_REFINE_FACTOR = 2
# "auto" keeps the vectors in memory when rows * dim is at most this many float32 values
# (or when the table has no ANN index); see the module docstring for the measurements.
MATRIX_BUDGET_FLOATS = 32_000_000

SearchMode = Literal["auto", "lance", "matrix", "hnsw"]
ResolvedMode = Literal["lance", "matrix", "hnsw"]


def _distinct(ids: np.ndarray) -> np.ndarray:
    """The distinct ids, ascending; no sort when they already are (serving passes them so)."""
    ids = np.asarray(ids).astype(np.int64, copy=False).ravel()
    if ids.size < 2 or bool((ids[1:] > ids[:-1]).all()):
        return ids
    return np.unique(ids)


class ItemIndex:
    """Top-k item search over one published model version. Build with :meth:`open`.

    Read-only after opening; ``search`` in matrix mode is safe to call from many threads.
    """

    def __init__(
        self,
        *,
        version: str,
        mode: ResolvedMode,
        index_type: str,
        item_ids: np.ndarray,
        attributes: pa.Table,
        vectors: np.ndarray | None,
        table: Any | None,
        dim: int,
        num_partitions: int,
        ef: int,
        refine_factor: int,
        hnsw: Any | None = None,
        hnsw_ef: int = HNSW_EF_SEARCH,
    ) -> None:
        self.version = version
        self.mode = mode
        self.index_type = index_type
        self._ids = item_ids  # sorted ascending; row i of vectors/attributes is item_ids[i]
        self._attributes = attributes
        self._vectors = vectors
        self._table = table
        self.rows = int(item_ids.shape[0])
        self.dim = dim
        self._num_partitions = num_partitions
        self._ef = ef
        self._refine_factor = refine_factor
        self._hnsw = hnsw  # faiss.IndexHNSWFlat over `vectors` (hnsw mode), row i = position i
        self._hnsw_ef = hnsw_ef

    @property
    def item_ids(self) -> np.ndarray:
        """(N,) int64 item ids, ascending: row i of `vectors` is item_ids[i]."""
        return self._ids

    @property
    def vectors(self) -> np.ndarray:
        """(N, d) float32 vectors (matrix and hnsw modes)."""
        if self._vectors is None:
            raise ValueError("vectors are held in memory only in matrix and hnsw modes")
        return self._vectors

    @classmethod
    def open(
        cls,
        db_dir: DbLocation,
        version: str,
        mode: SearchMode = "auto",
        *,
        matrix_budget_floats: int = MATRIX_BUDGET_FLOATS,
        hnsw_min_rows: int = HNSW_MIN_ROWS,
        ef: int = ANN_EF,
        refine_factor: int = ANN_REFINE_FACTOR,
        hnsw_ef: int = HNSW_EF_SEARCH,
        storage_options: dict[str, str] | None = None,
        graph_dir: Path | None = None,
    ) -> ItemIndex:
        """Open the published table of ``version`` (``db_dir`` a folder or an object store
        URI with its ``storage_options``; ``graph_dir``: recsys.index.table.graph_root).

        Raises ``FileNotFoundError`` when the version has no table and
        :class:`recsys.index.table.IncompleteTableError` when its table was never published.
        """
        if mode not in ("auto", "lance", "matrix", "hnsw"):
            raise ValueError(f"mode must be 'auto', 'lance', 'matrix' or 'hnsw', got {mode!r}")
        table, meta = open_published(db_dir, version, storage_options)
        rows, dim = int(meta["rows"]), int(meta["dim"])

        resolved: ResolvedMode
        if mode == "auto":
            indexed = meta["index_type"] != "flat"
            if indexed and rows * dim > matrix_budget_floats:
                resolved = "lance"
            else:
                resolved = "hnsw" if rows >= hnsw_min_rows else "matrix"
        else:
            resolved = mode
        graphs = graph_root(db_dir, graph_dir)
        if resolved != "lance":
            data = table.to_arrow()
        else:
            columns = [c for c in table.schema.names if c != VECTOR_COLUMN]
            data = table.search().select(columns).limit(None).to_arrow()
        ids = column_numpy(data, ID_COLUMN).astype(np.int64, copy=False)
        order = np.argsort(ids, kind="stable")
        data = data.take(pa.array(order))
        ids = ids[order]
        vectors = vectors_numpy(data, dim) if resolved != "lance" else None
        attributes = data.drop_columns([c for c in (VECTOR_COLUMN,) if c in data.column_names])
        return cls(
            version=version,
            mode=resolved,
            index_type=str(meta["index_type"]),
            item_ids=ids,
            attributes=attributes,
            vectors=vectors,
            table=table if resolved == "lance" else None,
            dim=dim,
            num_partitions=int(meta.get("num_partitions", 1)),
            ef=ef,
            refine_factor=refine_factor,
            hnsw_ef=hnsw_ef,
            hnsw=(
                load_or_build(
                    vectors, graph_path(graphs, version, table.version) if graphs else None
                )
                if resolved == "hnsw" and vectors is not None
                else None
            ),
        )

    def __repr__(self) -> str:
        return (
            f"ItemIndex(version={self.version!r}, mode={self.mode!r}, rows={self.rows}, "
            f"dim={self.dim}, index_type={self.index_type!r})"
        )

    def _query(self, user_vector: np.ndarray) -> np.ndarray:
        u = np.asarray(user_vector, dtype=np.float32)
        if u.shape != (self.dim,):
            raise ValueError(f"user_vector must have shape ({self.dim},), got {u.shape}")
        if not np.isfinite(u).all():
            raise ValueError("user_vector contains NaN or infinity")
        return u

    def search(
        self, user_vector: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` items by dot product, skipping ids in ``exclude``.

        Returns ``(item_ids int64, scores float32)`` sorted by score descending; fewer than
        ``k`` only when fewer items remain after exclusion (or, with an ANN index, when the
        probed partitions hold too few). Unknown ids in ``exclude`` are ignored.
        """
        u = self._query(user_vector)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        k = int(k)
        seen = _distinct(exclude) if exclude is not None else np.empty(0, dtype=np.int64)
        if k == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if self.mode == "matrix":
            return self._search_matrix(u, k, seen)
        if self.mode == "hnsw":
            return self._search_hnsw(u, k, seen)
        return self._search_lance(u, k, seen)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the known ids among ``ids`` (unknown ids dropped)."""
        pos = np.searchsorted(self._ids, ids)
        pos = np.minimum(pos, self.rows - 1)
        return pos[self._ids[pos] == ids]

    def _search_matrix(
        self, u: np.ndarray, k: int, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._vectors is not None
        scores = self._vectors @ u
        masked = self._positions(seen) if seen.size else np.empty(0, dtype=np.intp)
        if masked.size:
            scores[masked] = -np.inf
        k = min(k, self.rows - int(masked.size))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k] if k < self.rows else np.arange(self.rows)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self._ids[top].copy(), scores[top].astype(np.float32, copy=False)

    def _search_hnsw(
        self, u: np.ndarray, k: int, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._hnsw is not None and self._vectors is not None
        masked = self._positions(seen) if seen.size else np.empty(0, dtype=np.int64)
        # Excluded rows are skipped inside the scan (no over-fetching). The selectors are
        # locals, alive until the search returns (faiss holds bare pointers to them).
        batch = faiss.IDSelectorBatch(masked.astype(np.int64, copy=False)) if masked.size else None
        skip = faiss.IDSelectorNot(batch) if batch is not None else None
        search_parameters = faiss.SearchParametersHNSW  # type: ignore[attr-defined]
        params = search_parameters(efSearch=max(self._hnsw_ef, k), sel=skip)
        k = min(k, self.rows - int(masked.size))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        query = np.append(u, np.float32(0.0))[None, :]  # [u, 0]: see mips_to_l2
        _, found = self._hnsw.search(query, k, params=params)
        top = found[0][found[0] >= 0]  # -1: the graph walk reached fewer than k items
        scores = self._vectors[top] @ u  # the same arithmetic as the matrix mode
        order = np.argsort(-scores, kind="stable")
        return self._ids[top[order]].copy(), scores[order].astype(np.float32, copy=False)

    def _search_lance(
        self, u: np.ndarray, k: int, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self._table is not None
        fetch = min(self.rows, k + int(seen.size))
        query = (
            self._table.search(u, vector_column_name=VECTOR_COLUMN)
            .distance_type(METRIC)
            .select([ID_COLUMN, VECTOR_COLUMN, "_distance"])
            .limit(fetch)
        )
        if self.index_type != "flat":
            query = (
                query.nprobes(self._num_partitions)
                # Lance needs ef >= rows fetched * refine factor (it refines that many).
                .ef(max(self._ef, fetch * self._refine_factor))
                .refine_factor(self._refine_factor)
            )
        result = query.to_arrow()
        ids = column_numpy(result, ID_COLUMN).astype(np.int64, copy=False)
        vecs = vectors_numpy(result, self.dim)
        if seen.size:
            keep = ~np.isin(ids, seen)
            ids, vecs = ids[keep], vecs[keep]
        scores = vecs @ u  # exact scores, also re-ranks approximate (PQ) candidates
        order = np.argsort(-scores, kind="stable")[:k]
        return ids[order], scores[order].astype(np.float32, copy=False)

    def attributes(self, item_ids: np.ndarray | list[int]) -> list[dict[str, Any]]:
        """The stored attribute rows (``item_id``, ``title``, ``genres``...) in the given order.

        Raises ``KeyError`` for an id not in this version.
        """
        ids = np.asarray(item_ids, dtype=np.int64).ravel()
        if ids.size == 0:
            return []
        pos = np.minimum(np.searchsorted(self._ids, ids), self.rows - 1)
        missing = ids[self._ids[pos] != ids]
        if missing.size:
            raise KeyError(f"item ids not in version {self.version}: {missing[:10].tolist()}")
        return self._attributes.take(pa.array(pos)).to_pylist()
