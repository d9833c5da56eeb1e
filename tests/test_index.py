"""The item-embedding store against a real LanceDB in tmp_path (no mocks)."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from recsys.index.search import ItemIndex
from recsys.index.table import (
    IncompleteTableError,
    IndexInfo,
    drop_item_table,
    list_versions,
    table_name,
    write_item_table,
)

VERSION = "20261121T221500-3f9a2c1b"


def normalised(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def catalogue(n: int = 300, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # Shuffled, non-contiguous ids: the store must not assume ids are row numbers.
    ids = np.random.default_rng(seed).permutation(np.arange(n, dtype=np.int64) * 7 + 3)
    return ids, normalised(n, d, seed + 1)


def exact_top(
    ids: np.ndarray, vecs: np.ndarray, u: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    scores = vecs @ u
    keep = np.ones(len(ids), bool) if exclude is None else ~np.isin(ids, exclude)
    order = np.argsort(-scores[keep], kind="stable")[:k]
    return ids[keep][order], scores[keep][order]


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    return tmp_path / "lancedb"


@pytest.mark.parametrize("mode", ["matrix", "lance"])
def test_search_equals_numpy_exact_top_k(db_dir: Path, mode: str) -> None:
    ids, vecs = catalogue()
    info = write_item_table(db_dir, VERSION, ids, vecs)
    assert info == IndexInfo(
        table=f"items_{VERSION}",
        rows=300,
        dim=16,
        index_type="flat",
        build_seconds=info.build_seconds,
    )
    index = ItemIndex.open(db_dir, VERSION, mode=mode)  # type: ignore[arg-type]
    assert (index.mode, index.version, index.rows, index.dim) == (mode, VERSION, 300, 16)
    for u in normalised(10, 16, seed=99):
        got_ids, got_scores = index.search(u, 20)
        want_ids, want_scores = exact_top(ids, vecs, u, 20)
        assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-5)
        assert np.all(np.diff(got_scores) <= 0)


def test_lance_dot_distance_is_one_minus_dot_product(db_dir: Path) -> None:
    """Pins the metric: LanceDB's "dot" distance ranks exactly as numpy's dot product."""
    ids, vecs = catalogue(n=200)
    write_item_table(db_dir, VERSION, ids, vecs)
    table = lancedb.connect(db_dir).open_table(table_name(VERSION))
    u = normalised(1, 16, seed=5)[0]
    result = (
        table.search(u).distance_type("dot").select(["item_id", "_distance"]).limit(200).to_arrow()
    )
    got = result["item_id"].to_numpy()
    want_ids, want_scores = exact_top(ids, vecs, u, 200)
    np.testing.assert_array_equal(got, want_ids)
    np.testing.assert_allclose(1.0 - result["_distance"].to_numpy(), want_scores, atol=1e-5)


@pytest.mark.parametrize("mode", ["matrix", "lance"])
def test_exclusion_removes_seen_items_and_still_returns_k(db_dir: Path, mode: str) -> None:
    ids, vecs = catalogue()
    write_item_table(db_dir, VERSION, ids, vecs)
    index = ItemIndex.open(db_dir, VERSION, mode=mode)  # type: ignore[arg-type]
    u = normalised(1, 16, seed=7)[0]
    top_ids, _ = index.search(u, 20)
    # Exclude the best 15 plus some ids that are not in the catalogue at all.
    seen = np.concatenate([top_ids[:15], np.array([-1, 10**12], dtype=np.int64)])
    got_ids, got_scores = index.search(u, 20, exclude=seen)
    assert len(got_ids) == 20
    assert not np.isin(got_ids, seen).any()
    want_ids, want_scores = exact_top(ids, vecs, u, 20, exclude=seen)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    # Repeated ids count once (the count decides how many are left to return).
    again, _ = index.search(u, 20, exclude=np.concatenate([seen, seen[::-1]]))
    np.testing.assert_array_equal(again, got_ids)
    # Excluding nearly everything leaves fewer than k.
    rest_ids, _ = index.search(u, 20, exclude=ids[5:])
    assert sorted(rest_ids.tolist()) == sorted(ids[:5].tolist())


def test_search_rejects_bad_queries(db_dir: Path) -> None:
    ids, vecs = catalogue()
    write_item_table(db_dir, VERSION, ids, vecs)
    index = ItemIndex.open(db_dir, VERSION, mode="matrix")
    with pytest.raises(ValueError, match="shape"):
        index.search(np.ones(8, np.float32), 5)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(16, np.nan, np.float32), 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(vecs[0], -1)
    assert len(index.search(vecs[0], 0)[0]) == 0


def test_attributes_round_trip(db_dir: Path) -> None:
    ids, vecs = catalogue(n=50)
    attrs = pa.table(
        {
            "title": [f"Movie {i}" for i in ids],
            "genres": pa.array(
                [["Drama"] if i % 2 else ["Comedy", "Romance"] for i in ids],
                type=pa.list_(pa.string()),
            ),
            "release_year": pa.array(
                [None if i % 5 == 0 else 1990 + i % 30 for i in ids], type=pa.int64()
            ),
        }
    )
    write_item_table(db_dir, VERSION, ids, vecs, attrs)
    for mode in ("matrix", "lance"):
        index = ItemIndex.open(db_dir, VERSION, mode=mode)  # type: ignore[arg-type]
        wanted = [int(ids[9]), int(ids[0]), int(ids[30])]
        rows = index.attributes(np.array(wanted))
        assert [r["item_id"] for r in rows] == wanted
        for row in rows:
            i = row["item_id"]
            assert row["title"] == f"Movie {i}"
            assert row["genres"] == (["Drama"] if i % 2 else ["Comedy", "Romance"])
            assert row["release_year"] == (None if i % 5 == 0 else 1990 + i % 30)
            assert "vector" not in row
        with pytest.raises(KeyError):
            index.attributes([int(ids[0]), 123456789])
        top_ids, _ = index.search(vecs[3], 3)
        assert index.attributes(top_ids)[0]["item_id"] == ids[3]


def test_attributes_must_align_and_avoid_reserved_names(db_dir: Path) -> None:
    ids, vecs = catalogue(n=20)
    with pytest.raises(ValueError, match="rows"):
        write_item_table(db_dir, VERSION, ids, vecs, pa.table({"title": ["x"] * 19}))
    with pytest.raises(ValueError, match="aligned"):
        write_item_table(db_dir, VERSION, ids, vecs, pa.table({"item_id": ids[::-1]}))
    with pytest.raises(ValueError, match="reserved"):
        write_item_table(db_dir, VERSION, ids, vecs, pa.table({"vector": ids}))
    with pytest.raises(ValueError, match="NaN"):
        write_item_table(db_dir, VERSION, ids, vecs * np.nan)
    with pytest.raises(ValueError, match="duplicates"):
        write_item_table(db_dir, VERSION, np.zeros(20, np.int64), vecs)
    assert list_versions(db_dir) == []


@pytest.mark.parametrize(
    "bad", ["../x", "a;drop", "v\n", "a;drop table items", "", "a b", "a/b", "x'--", "é", "v" * 129]
)
def test_invalid_versions_rejected(db_dir: Path, bad: str) -> None:
    ids, vecs = catalogue(n=10)
    with pytest.raises(ValueError, match="invalid model version"):
        write_item_table(db_dir, bad, ids, vecs)
    with pytest.raises(ValueError, match="invalid model version"):
        ItemIndex.open(db_dir, bad)
    with pytest.raises(ValueError, match="invalid model version"):
        drop_item_table(db_dir, bad)
    assert not (db_dir.parent / "x.lance").exists()


def test_rewrite_replaces_the_version_and_pinned_readers_keep_the_old_one(db_dir: Path) -> None:
    ids, vecs = catalogue(n=100)
    write_item_table(db_dir, VERSION, ids, vecs, pa.table({"title": ["old"] * 100}))
    old = ItemIndex.open(db_dir, VERSION, mode="lance")
    new_ids = np.arange(40, dtype=np.int64) + 10_000
    new_vecs = normalised(40, 16, seed=42)
    info = write_item_table(db_dir, VERSION, new_ids, new_vecs, pa.table({"title": ["new"] * 40}))
    assert info.rows == 40
    assert list_versions(db_dir) == [VERSION]
    new = ItemIndex.open(db_dir, VERSION, mode="lance")
    assert new.rows == 40
    got, _ = new.search(new_vecs[0], 5)
    np.testing.assert_array_equal(got, exact_top(new_ids, new_vecs, new_vecs[0], 5)[0])
    assert new.attributes(got[:1])[0]["title"] == "new"
    # The reader opened before the rewrite still serves the version it pinned.
    got_old, _ = old.search(vecs[0], 5)
    np.testing.assert_array_equal(got_old, exact_top(ids, vecs, vecs[0], 5)[0])


def test_killed_write_is_never_served_and_a_retry_overwrites_it(db_dir: Path) -> None:
    ids, vecs = catalogue(n=100)
    # A run killed after committing data but before publishing: an untagged table.
    db = lancedb.connect(db_dir)
    db.create_table(
        table_name(VERSION),
        pa.table(
            {
                "item_id": ids,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 16),
            }
        ),
    )
    # A run killed before its first commit: a table folder without a manifest.
    (db_dir / "items_crashed.lance" / "data").mkdir(parents=True)
    (db_dir / "items_crashed.lance" / "data" / "partial.lance").write_bytes(b"\0" * 64)
    assert list_versions(db_dir) == []
    assert list_versions(db_dir, include_unpublished=True) == [VERSION, "crashed"]
    with pytest.raises(IncompleteTableError):
        ItemIndex.open(db_dir, VERSION)
    with pytest.raises(IncompleteTableError):
        ItemIndex.open(db_dir, "crashed")
    with pytest.raises(FileNotFoundError):
        ItemIndex.open(db_dir, "never-written")

    write_item_table(db_dir, VERSION, ids, vecs)
    write_item_table(db_dir, "crashed", ids, vecs)
    assert list_versions(db_dir) == [VERSION, "crashed"]
    assert ItemIndex.open(db_dir, "crashed").rows == 100


def test_list_and_drop_versions(db_dir: Path) -> None:
    assert list_versions(db_dir) == []
    ids, vecs = catalogue(n=30)
    for version in ("20261122T000000-bbbb", "20261121T000000-aaaa", "v_3"):
        write_item_table(db_dir, version, ids, vecs)
    lancedb.connect(db_dir).create_table("something_else", pa.table({"a": [1]}))
    assert list_versions(db_dir) == ["20261121T000000-aaaa", "20261122T000000-bbbb", "v_3"]
    drop_item_table(db_dir, "20261121T000000-aaaa")
    drop_item_table(db_dir, "20261121T000000-aaaa")  # dropping twice is not an error
    assert list_versions(db_dir) == ["20261122T000000-bbbb", "v_3"]
    with pytest.raises(FileNotFoundError):
        ItemIndex.open(db_dir, "20261121T000000-aaaa")


def test_auto_mode_follows_the_memory_budget(db_dir: Path) -> None:
    ids, vecs = catalogue(n=100)
    write_item_table(db_dir, "flat", ids, vecs)
    write_item_table(db_dir, "ann", ids, vecs, ann_min_rows=0)
    assert ItemIndex.open(db_dir, "flat").mode == "matrix"
    assert ItemIndex.open(db_dir, "ann").mode == "matrix"
    # From hnsw_min_rows rows on, in memory means the HNSW graph rather than a full scan.
    assert ItemIndex.open(db_dir, "flat", hnsw_min_rows=100).mode == "hnsw"
    assert ItemIndex.open(db_dir, "ann", hnsw_min_rows=101).mode == "matrix"
    small = 100 * 16 - 1
    assert ItemIndex.open(db_dir, "ann", matrix_budget_floats=small).mode == "lance"
    # Without an ANN index LanceDB would scan everything anyway: the matrix is faster.
    assert ItemIndex.open(db_dir, "flat", matrix_budget_floats=small).mode == "matrix"


def test_ann_index_recall_at_20(db_dir: Path) -> None:
    n, d = 2_000, 64
    ids = np.arange(n, dtype=np.int64) + 1
    vecs = normalised(n, d, seed=3)
    info = write_item_table(db_dir, VERSION, ids, vecs, ann_min_rows=2_000)
    assert info.index_type == "IVF_HNSW_SQ" and info.rows == n and info.dim == d
    table = lancedb.connect(db_dir).open_table(table_name(VERSION))
    assert [i.index_type for i in table.list_indices()] == ["IvfHnswSq"]
    plan = table.search(vecs[0]).distance_type("dot").limit(20).explain_plan(True)
    assert "ANNSubIndex" in plan and "metric=Dot" in plan
    index = ItemIndex.open(db_dir, VERSION, mode="lance")
    assert index.index_type == "IVF_HNSW_SQ"
    recalls = []
    queries = normalised(50, d, seed=11)
    for u in queries:
        seen = ids[np.random.default_rng(int(u[0] * 1e6) % 2**32).choice(n, 20, replace=False)]
        got, scores = index.search(u, 20, exclude=seen)
        want, _ = exact_top(ids, vecs, u, 20, exclude=seen)
        assert not np.isin(got, seen).any()
        assert np.all(np.diff(scores) <= 0)
        recalls.append(len(set(got.tolist()) & set(want.tolist())) / 20)
    assert np.mean(recalls) >= 0.8, np.mean(recalls)
    # A long exclusion list (fetched rows * refine factor above the default ef) still works.
    long_seen = ids[:300]
    got, _ = index.search(queries[0], 20, exclude=long_seen)
    assert len(got) == 20 and not np.isin(got, long_seen).any()
    # Below the threshold no index is built.
    assert write_item_table(db_dir, "small", ids, vecs).index_type == "flat"


def test_hnsw_mode_recall_exclusion_and_exact_scores(db_dir: Path) -> None:
    """The in-memory HNSW graph: excluded ids never come back, scores are the exact dot
    products (same arithmetic as the matrix), recall@20 against the exact top-20 is high on
    random vectors shaped like the towers' (``[v / T, bias]`` with unit v, queries
    ``[u, 1]``): no clusters for the graph to follow, the hard case."""
    n, d = 5_000, 32
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 + 1)
    bias = rng.normal(0, 1, (n, 1)).astype(np.float32)
    vecs = np.hstack([normalised(n, d - 1, seed=4) / 0.2, bias])
    write_item_table(db_dir, VERSION, ids, vecs)
    index = ItemIndex.open(db_dir, VERSION, mode="hnsw")
    matrix = ItemIndex.open(db_dir, VERSION, mode="matrix")
    assert index.mode == "hnsw" and index.rows == n
    np.testing.assert_array_equal(index.vectors, matrix.vectors)
    recalls = []
    queries = np.hstack([normalised(50, d - 1, seed=12), np.ones((50, 1), np.float32)])
    for j, u in enumerate(queries):
        seen = ids[np.random.default_rng(j).choice(n, 30, replace=False)]
        seen = np.concatenate([seen, matrix.search(u, 5)[0]])  # some of the true best, too
        got, scores = index.search(u, 20, exclude=seen)
        want, _ = exact_top(ids, vecs, u, 20, exclude=seen)
        assert not np.isin(got, seen).any()
        assert np.all(np.diff(scores) <= 0)
        by_id = dict(zip(ids.tolist(), (vecs @ u).tolist(), strict=True))
        np.testing.assert_allclose(scores, [by_id[i] for i in got.tolist()], atol=1e-5)
        recalls.append(len(set(got.tolist()) & set(want.tolist())) / 20)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)
    # Excluding all but five returns at most those five; excluding everything, nothing.
    u = queries[0]
    rest, _ = index.search(u, 20, exclude=ids[5:])
    assert set(rest.tolist()) <= set(ids[:5].tolist())
    assert index.search(u, 20, exclude=ids)[0].size == 0


def test_hnsw_graph_is_kept_reused_rebuilt_when_unreadable_and_dropped(db_dir: Path) -> None:
    ids, vecs = catalogue(n=500)
    assert not write_item_table(db_dir, "small", ids, vecs).hnsw_graph  # below hnsw_min_rows
    assert write_item_table(db_dir, VERSION, ids, vecs, hnsw_min_rows=500).hnsw_graph
    (graph,) = (db_dir / ".hnsw").glob(f"{VERSION}@*.faiss")  # built before publishing
    written = graph.stat().st_mtime_ns
    u = normalised(1, 16, seed=3)[0]
    first = ItemIndex.open(db_dir, VERSION, mode="hnsw").search(u, 10)
    np.testing.assert_array_equal(first[0], exact_top(ids, vecs, u, 10)[0])
    again = ItemIndex.open(db_dir, VERSION, mode="hnsw").search(u, 10)
    assert graph.stat().st_mtime_ns == written  # read, not rebuilt
    np.testing.assert_array_equal(again[0], first[0])
    graph.write_bytes(b"not a faiss index")
    rebuilt = ItemIndex.open(db_dir, VERSION, mode="hnsw").search(u, 10)
    np.testing.assert_array_equal(rebuilt[0], first[0])
    assert graph.stat().st_size > 100  # rewritten whole
    assert list_versions(db_dir) == [VERSION, "small"]  # the graph folder is not a table
    drop_item_table(db_dir, VERSION)
    assert not graph.exists()
