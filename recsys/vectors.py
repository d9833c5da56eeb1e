"""The item-embedding store: one LanceDB table per model version, searched by dot product.

Layout: ``db_dir`` is a LanceDB database folder; model version ``V`` (``[A-Za-z0-9_-]``,
e.g. ``20261121T221500-3f9a2c1b``) lives in table ``items_V`` with columns ``item_id``
(int64), ``vector`` (fixed-size list of float32: the item tower's index vector ``[v / T, bias]``,
``towers.model.index_vectors``; the query is ``[u, 1]``) and any
attribute columns given (``title``, ``genres``, ``release_year``...) so serving can show
them. Scores are dot products; LanceDB searches with ``distance_type="dot"`` (its distance
is ``1 - dot``), and every score this module returns is recomputed exactly in NumPy from the
stored vectors, so LanceDB and matrix results are ranked by the same number.

Publication (nothing half-written is ever served). LanceDB OSS 0.40 has no local
``rename_table`` (it raises ``NotImplementedError: rename_table is not supported in LanceDB
OSS``), so a table cannot be built under a temporary name and renamed. Instead every table is
written under its final name with ``mode="overwrite"`` (one Lance commit), indexed (a second
commit), and only then is the Lance *tag* ``published`` pointed at that table version. Readers
(:meth:`ItemIndex.open`, :func:`list_versions`) only ever check out the tagged version:

* a run killed before tagging leaves an untagged table (or a folder without a manifest) that
  no reader opens (``ItemIndex.open`` raises :class:`IncompleteTableError`) and that a
  retry simply overwrites;
* rewriting an already published version moves the tag in one step: readers see the old
  complete version until the new one is complete. Tags survive ``mode="overwrite"``.
  The superseded version's files stay on disk until :func:`drop_item_table` (deleting them
  early would break readers still pinned to it); versions are meant to be written once.

ANN index: IVF_HNSW_SQ, dot metric, ``round(sqrt(N) / 16)`` IVF partitions (20 at 100K), every
partition probed, ``ef=max(100, fetched rows)``, ``refine_factor=2`` (candidates re-ranked
on the full vectors). Chosen on 100K random L2-normalised 64-d vectors (no cluster structure:
the hardest case), recall@20 vs exact, p50 on this 2-core machine while another benchmark ran:

* IVF_PQ, 316 partitions, 16 sub-vectors: 0.33 (default nprobes), 0.58 with nprobes=40 and
  refine_factor=10; 32 sub-vectors: 0.59, 0.97 only at nprobes=200 (19.6 ms); build 90-130 s.
  (On clustered synthetic vectors IVF_PQ/32 reached 0.98, so random data is the hard case.)
* IVF_HNSW_SQ, 19 partitions: 0.86 (defaults), 0.97 at ef=100, 0.993 at ef=100 +
  refine_factor=2 (12.7 ms), 0.999 at ef=200; build 45 s. With 1 partition (one big graph)
  only 0.65 at ef=100 and a 100 s build.

Tables below ``ann_min_rows`` (default 50,000) get no index: LanceDB then scans exactly.

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

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import HnswSq

VERSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
TABLE_PREFIX = "items_"
PUBLISHED_TAG = "published"
METADATA_KEY = b"recsys.item_store"
VECTOR_COLUMN = "vector"
ID_COLUMN = "item_id"
RESERVED_COLUMNS = {ID_COLUMN, VECTOR_COLUMN, "_distance", "_rowid", "_score"}
METRIC: Literal["dot"] = "dot"

ANN_INDEX_TYPE = "IVF_HNSW_SQ"
ANN_MIN_ROWS = 50_000
# Search-time settings of the HNSW index; every IVF partition is probed (there are few).
# recall@20 0.993 vs exact on 100K random normalised 64-d vectors (0.970 without refining).
ANN_EF = 100
ANN_REFINE_FACTOR = 2
# "auto" keeps the vectors in memory when rows * dim is at most this many float32 values
# (or when the table has no ANN index); see the module docstring for the measurements.
MATRIX_BUDGET_FLOATS = 32_000_000

# "auto" picks the matrix below this many rows and the in-memory HNSW graph from here on (in
# memory, i.e. within MATRIX_BUDGET_FLOATS). Measured crossover: see the module docstring.
HNSW_MIN_ROWS = 50_000
# The in-memory graph (faiss IndexHNSWFlat over the MIPS-to-L2 transformed vectors).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# Search breadth (per query: at least k): recall against speed, see the module docstring.
HNSW_EF_SEARCH = 256
# Built graphs are kept in this folder of the LanceDB directory, one file per table version.
HNSW_DIR = ".hnsw"

log = logging.getLogger(__name__)

SearchMode = Literal["auto", "lance", "matrix", "hnsw"]
ResolvedMode = Literal["lance", "matrix", "hnsw"]


class IncompleteTableError(LookupError):
    """The version's table exists but was never published (a killed or failed write)."""


@dataclass(frozen=True)
class IndexInfo:
    table: str
    rows: int
    dim: int
    index_type: str  # "flat" or the ANN index type: "IVF_HNSW_SQ"
    build_seconds: float
    hnsw_graph: bool = False  # whether the in-memory search graph was built and kept


def table_name(version: str) -> str:
    """The LanceDB table of a model version; rejects anything but ``[A-Za-z0-9_-]{1,128}``."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise ValueError(
            f"invalid model version {version!r}: expected 1-128 characters of [A-Za-z0-9_-]"
        )
    return TABLE_PREFIX + version


def _connect(db_dir: Path) -> Any:
    return lancedb.connect(Path(db_dir))


def _all_tables(db: Any) -> list[str]:
    names: list[str] = []
    token = None
    while True:
        response = db.list_tables(page_token=token)
        names.extend(response.tables)
        token = response.page_token
        if not token:
            return names


def _ann_partitions(rows: int) -> int:
    """IVF partitions of the HNSW index: sqrt(N) / 16, i.e. 20 at 100K rows.

    Each partition is its own HNSW graph and all are probed, so few partitions means few
    graph searches; LanceDB recommends a small number for HNSW. At 100K random 64-d rows,
    1 partition (one big graph) gave recall@20 0.65 at ef=100 and built 2x slower than 19.
    """
    return max(1, round(math.sqrt(rows) / 16))


def _check_inputs(
    item_ids: np.ndarray, vectors: np.ndarray, attributes: pa.Table | None
) -> tuple[np.ndarray, np.ndarray, pa.Table | None]:
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"item_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    vecs = np.asarray(vectors)
    if vecs.ndim != 2 or vecs.shape[0] != ids.shape[0] or vecs.shape[1] < 1:
        raise ValueError(f"vectors must be ({ids.shape[0]}, d), got {vecs.shape}")
    if ids.shape[0] == 0:
        raise ValueError("no items to write")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError("item_ids contain duplicates")
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    if not np.isfinite(vecs).all():
        raise ValueError("vectors contain NaN or infinity")
    if attributes is not None:
        if attributes.num_rows != ids.shape[0]:
            raise ValueError(
                f"attributes has {attributes.num_rows} rows for {ids.shape[0]} item_ids"
            )
        if ID_COLUMN in attributes.column_names:
            given = attributes.column(ID_COLUMN).to_numpy(zero_copy_only=False)
            if not np.array_equal(given.astype(np.int64), ids):
                raise ValueError("attributes.item_id is not aligned with item_ids")
            attributes = attributes.drop_columns([ID_COLUMN])
        clash = RESERVED_COLUMNS & set(attributes.column_names)
        if clash:
            raise ValueError(f"attribute columns use reserved names: {sorted(clash)}")
    return ids, vecs, attributes


def write_item_table(
    db_dir: Path,
    version: str,
    item_ids: np.ndarray,
    vectors: np.ndarray,
    attributes: pa.Table | None = None,
    *,
    ann_min_rows: int = ANN_MIN_ROWS,
    hnsw_min_rows: int = HNSW_MIN_ROWS,
) -> IndexInfo:
    """Write (or rewrite) the item table of ``version`` and publish it once complete.

    Builds an IVF_HNSW_SQ index (dot metric, sqrt(N)/16 partitions) when
    ``rows >= ann_min_rows``,
    otherwise leaves the table unindexed for exact flat search. From ``hnsw_min_rows`` rows
    on it also builds and keeps the in-memory HNSW graph that ``ItemIndex.open`` then reads
    instead of building (see the module docstring), before publishing. Rewriting an existing
    version is safe: readers keep the previous published version until the new one is tagged.
    """
    name = table_name(version)
    ids, vecs, attrs = _check_inputs(item_ids, vectors, attributes)
    rows, dim = vecs.shape
    use_ann = rows >= ann_min_rows
    index_type = ANN_INDEX_TYPE if use_ann else "flat"
    meta = {
        "version": version,
        "rows": rows,
        "dim": dim,
        "metric": METRIC,
        "index_type": index_type,
    }
    if use_ann:
        meta["num_partitions"] = _ann_partitions(rows)

    columns: dict[str, pa.Array] = {ID_COLUMN: pa.array(ids, type=pa.int64())}
    if attrs is not None:
        for column in attrs.column_names:
            columns[column] = attrs.column(column).combine_chunks()
    columns[VECTOR_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
    data = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})

    t0 = time.perf_counter()
    db = _connect(db_dir)
    table = db.create_table(name, data, mode="overwrite")
    if use_ann:
        table.create_index(
            VECTOR_COLUMN,
            config=HnswSq(distance_type=METRIC, num_partitions=meta["num_partitions"]),
        )
    if table.count_rows() != rows:  # paranoia: the committed version must hold every row
        raise RuntimeError(f"{name}: wrote {table.count_rows()} rows, expected {rows}")
    graph = rows >= hnsw_min_rows
    if graph:  # rows in ItemIndex order (ascending ids), keyed by this table version
        order = np.argsort(ids, kind="stable")
        _hnsw_index(vecs[order], _hnsw_cache(db_dir, version, table.version))
    # The last step: readers only open the tagged version.
    if PUBLISHED_TAG in table.tags.list():
        table.tags.update(PUBLISHED_TAG, table.version)
    else:
        table.tags.create(PUBLISHED_TAG, table.version)
    return IndexInfo(
        table=name,
        rows=rows,
        dim=dim,
        index_type=index_type,
        build_seconds=time.perf_counter() - t0,
        hnsw_graph=graph,
    )


def drop_item_table(db_dir: Path, version: str) -> None:
    """Delete a version's table (published or not); a missing table is not an error."""
    name = table_name(version)
    _connect(db_dir).drop_table(name, ignore_missing=True)
    for graph in (Path(db_dir) / HNSW_DIR).glob(f"{version}@*.faiss"):
        graph.unlink(missing_ok=True)


def list_versions(db_dir: Path, *, include_unpublished: bool = False) -> list[str]:
    """Model versions with a published item table, sorted; ``include_unpublished`` adds the
    tables of killed or failed writes (which a retry overwrites or a drop removes)."""
    if not Path(db_dir).exists():
        return []
    db = _connect(db_dir)
    versions = []
    for name in _all_tables(db):
        if not name.startswith(TABLE_PREFIX):
            continue
        version = name[len(TABLE_PREFIX) :]
        if not VERSION_RE.fullmatch(version):
            continue
        if include_unpublished or _is_published(db, name):
            versions.append(version)
    return sorted(versions)


def _is_published(db: Any, name: str) -> bool:
    try:
        table = db.open_table(name)
    except ValueError:  # a folder without a committed manifest: "Table ... was not found"
        return False
    return PUBLISHED_TAG in table.tags.list()


def _mips_to_l2(vectors: np.ndarray) -> np.ndarray:
    """Item vectors x -> [x, sqrt(R^2 - |x|^2)] with R the largest norm (Bachrach et al.,
    RecSys 2014): with queries [u, 0], |q - x'|^2 = |u|^2 + R^2 - 2 u.x, so the nearest
    neighbours in L2 are exactly the largest dot products. A graph built on the raw dot
    product (not a metric: an item need not be its own best match) misses many of them."""
    norms2 = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0))
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def _hnsw_cache(db_dir: Path, version: str, table_version: int) -> Path:
    return Path(db_dir) / HNSW_DIR / f"{version}@{table_version}.faiss"


def _hnsw_index(vectors: np.ndarray, cache: Path | None) -> Any:
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
    index.add(_mips_to_l2(vectors))
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


def _distinct(ids: np.ndarray) -> np.ndarray:
    """The distinct ids, ascending; no sort when they already are (serving passes them so)."""
    ids = np.asarray(ids).astype(np.int64, copy=False).ravel()
    if ids.size < 2 or bool((ids[1:] > ids[:-1]).all()):
        return ids
    return np.unique(ids)


def _column_numpy(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).combine_chunks().to_numpy(zero_copy_only=False)


def _vectors_numpy(table: pa.Table, dim: int) -> np.ndarray:
    values = table.column(VECTOR_COLUMN).combine_chunks().flatten()
    return np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
        -1, dim
    )


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
        db_dir: Path,
        version: str,
        mode: SearchMode = "auto",
        *,
        matrix_budget_floats: int = MATRIX_BUDGET_FLOATS,
        hnsw_min_rows: int = HNSW_MIN_ROWS,
        ef: int = ANN_EF,
        refine_factor: int = ANN_REFINE_FACTOR,
        hnsw_ef: int = HNSW_EF_SEARCH,
    ) -> ItemIndex:
        """Open the published table of ``version``.

        Raises ``FileNotFoundError`` when the version has no table and
        :class:`IncompleteTableError` when its table was never published.
        """
        if mode not in ("auto", "lance", "matrix", "hnsw"):
            raise ValueError(f"mode must be 'auto', 'lance', 'matrix' or 'hnsw', got {mode!r}")
        name = table_name(version)
        db = _connect(db_dir)
        if name not in _all_tables(db):
            raise FileNotFoundError(f"no item table for model version {version!r} in {db_dir}")
        try:
            table = db.open_table(name)
        except ValueError as exc:
            raise IncompleteTableError(
                f"{name} in {db_dir} has no committed data (a killed write); rewrite it"
            ) from exc
        if PUBLISHED_TAG not in table.tags.list():
            raise IncompleteTableError(
                f"{name} in {db_dir} was never published (a killed or failed write); rewrite it"
            )
        table.checkout(PUBLISHED_TAG)  # pin: a concurrent rewrite does not change what we serve
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise IncompleteTableError(f"{name} lacks {METADATA_KEY.decode()} metadata")
        meta = json.loads(raw)
        rows, dim = int(meta["rows"]), int(meta["dim"])
        if table.count_rows() != rows:
            raise IncompleteTableError(f"{name}: {table.count_rows()} rows, metadata says {rows}")

        resolved: ResolvedMode
        if mode == "auto":
            indexed = meta["index_type"] != "flat"
            if indexed and rows * dim > matrix_budget_floats:
                resolved = "lance"
            else:
                resolved = "hnsw" if rows >= hnsw_min_rows else "matrix"
        else:
            resolved = mode
        if resolved != "lance":
            data = table.to_arrow()
        else:
            columns = [c for c in table.schema.names if c != VECTOR_COLUMN]
            data = table.search().select(columns).limit(None).to_arrow()
        ids = _column_numpy(data, ID_COLUMN).astype(np.int64, copy=False)
        order = np.argsort(ids, kind="stable")
        data = data.take(pa.array(order))
        ids = ids[order]
        vectors = _vectors_numpy(data, dim) if resolved != "lance" else None
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
                _hnsw_index(vectors, _hnsw_cache(db_dir, version, table.version))
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
        query = np.append(u, np.float32(0.0))[None, :]  # [u, 0]: see _mips_to_l2
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
        ids = _column_numpy(result, ID_COLUMN).astype(np.int64, copy=False)
        vecs = _vectors_numpy(result, self.dim)
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
