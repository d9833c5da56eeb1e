"""Tests of the synthetic generator: the canonical contract, determinism, skew and signal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.datasets import synthetic
from recsys.datasets.synthetic import GENRES, OCCUPATIONS, generate_synthetic
from recsys.validation.folder import validate_dataset

START = datetime(2023, 3, 1, tzinfo=UTC)
DAYS = 90
EXPECTED = {
    "users": [("user_id", pa.int64()), ("age", pa.int64()), ("gender", pa.string()),
              ("occupation", pa.string()), ("zip_code", pa.string()),
              ("valid_from", pa.timestamp("us", tz="UTC"))],
    "items": [("item_id", pa.int64()), ("title", pa.string()), ("release_year", pa.int64()),
              ("genres", pa.list_(pa.string())), ("valid_from", pa.timestamp("us", tz="UTC"))],
    "interactions": [("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()),
                     ("event_timestamp", pa.timestamp("us", tz="UTC"))],
}  # fmt: skip


def read(folder: Path, name: str) -> pa.Table:
    return pq.read_table(folder / f"{name}.parquet")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate_synthetic(out, 20_000, seed=3, start=START, days=DAYS, progress=False)
    return out


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200K events: 5000 users, 2000 items (the default sizes)."""
    out = tmp_path_factory.mktemp("medium")
    summary = generate_synthetic(out, 200_000, seed=0, progress=False)
    assert (summary.n_users, summary.n_items) == (5000, 2000)
    return out


@pytest.mark.parametrize("name", EXPECTED)
def test_exact_arrow_schema(small: Path, name: str) -> None:
    schema = pq.read_schema(small / f"{name}.parquet")
    assert [(f.name, f.type) for f in schema] == EXPECTED[name]


def test_folder_passes_the_canonical_validation(small: Path) -> None:
    validate_dataset(small)
    assert not [p.name for p in small.iterdir() if ".tmp-" in p.name]


def test_ids_references_and_timestamps(small: Path) -> None:
    users, items, events = (read(small, n) for n in ("users", "items", "interactions"))
    assert events.num_rows == 20_000
    assert users["user_id"].to_pylist() == list(range(1, users.num_rows + 1))
    assert items["item_id"].to_pylist() == list(range(1, items.num_rows + 1))
    assert pc.all(pc.is_in(events["user_id"], users["user_id"])).as_py()
    assert pc.all(pc.is_in(events["item_id"], items["item_id"])).as_py()
    ts = events["event_timestamp"]
    assert pc.min(ts).as_py() >= START
    assert pc.max(ts).as_py() < START + timedelta(days=DAYS)
    # Second resolution: ties exist, and microseconds are zero.
    assert pc.count_distinct(ts).as_py() < events.num_rows
    assert pc.all(pc.equal(pc.microsecond(ts), 0)).as_py()


def test_attribute_values(small: Path) -> None:
    users, items, events = (read(small, n) for n in ("users", "items", "interactions"))
    ratings = events["rating"].to_numpy()
    assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    age = users["age"].to_numpy()
    assert age.min() >= 18 and age.max() <= 70
    assert set(users["gender"].to_pylist()) == {"M", "F"}
    assert set(users["occupation"].to_pylist()) <= set(OCCUPATIONS)
    assert all(len(z) == 5 and z.isdigit() for z in users["zip_code"].to_pylist())
    genres = items["genres"].to_pylist()
    assert all(1 <= len(g) <= 3 and len(set(g)) == len(g) and set(g) <= set(GENRES) for g in genres)
    years = pc.drop_null(items["release_year"]).to_numpy()
    assert years.min() >= 1950 and years.max() <= 2024
    assert items["title"][0].as_py() == "Item 1"


def test_truth_file_shapes(small: Path) -> None:
    users, items = read(small, "users"), read(small, "items")
    truth = np.load(small / "synthetic_truth.npz")
    assert truth["user_factors"].shape == (users.num_rows, 16)
    assert truth["user_factors"].dtype == np.float32
    assert truth["item_factors"].shape == (items.num_rows, 16)
    assert truth["item_log_pop"].shape == (items.num_rows,)
    assert np.isclose(np.exp(truth["item_log_pop"]).sum(), 1.0)
    assert float(truth["temperature"]) > 0


def test_same_seed_same_tables_other_seed_differs(tmp_path: Path) -> None:
    def make(name: str, seed: int) -> dict[str, pa.Table]:
        generate_synthetic(tmp_path / name, 5_000, seed=seed, progress=False)
        return {n: read(tmp_path / name, n) for n in EXPECTED}

    a, b, c = make("a", 7), make("b", 7), make("c", 8)
    for name in EXPECTED:
        assert a[name].equals(b[name]), name
    assert not a["interactions"].equals(c["interactions"])
    assert not a["users"].equals(c["users"])


def test_chunk_size_changes_row_groups_not_data(tmp_path: Path) -> None:
    n = 2 * synthetic.BLOCK + 12_345  # crosses RNG block boundaries off the chunk boundaries
    kwargs: dict[str, Any] = {"n_users": 3000, "n_items": 500, "progress": False}
    generate_synthetic(tmp_path / "big", n, chunk_size=1_000_000, **kwargs)
    generate_synthetic(tmp_path / "small", n, chunk_size=99_999, **kwargs)
    big, small = (pq.ParquetFile(tmp_path / d / "interactions.parquet") for d in ("big", "small"))
    assert big.metadata.num_row_groups == 1
    assert small.metadata.num_row_groups == -(-n // 99_999)
    assert small.metadata.row_group(0).num_rows == 99_999
    assert big.read().equals(small.read())


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_interactions"):
        generate_synthetic(tmp_path, 0, progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        generate_synthetic(tmp_path, 10, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="n_users"):
        generate_synthetic(tmp_path, 10, n_users=0, progress=False)
    assert not list(tmp_path.iterdir())


def test_single_user_and_item(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, 100, n_users=1, n_items=1, progress=False)
    validate_dataset(tmp_path)
    events = read(tmp_path, "interactions")
    assert set(events["user_id"].to_pylist()) == set(events["item_id"].to_pylist()) == {1}


def test_naive_start_is_utc(tmp_path: Path) -> None:
    summary = generate_synthetic(
        tmp_path, 1_000, start=datetime(2024, 5, 1), days=2, progress=False
    )
    assert summary.start == datetime(2024, 5, 1, tzinfo=UTC)
    assert summary.end == datetime(2024, 5, 3, tzinfo=UTC)
    ts = read(tmp_path, "interactions")["event_timestamp"]
    assert pc.min(ts).as_py() >= summary.start and pc.max(ts).as_py() < summary.end


def test_popularity_and_activity_are_skewed(medium: Path) -> None:
    events = read(medium, "interactions")
    for key, n in (("item_id", 2000), ("user_id", 5000)):
        counts = np.sort(np.bincount(events[key].to_numpy(), minlength=n + 1)[1:])[::-1]
        assert counts[: n // 10].sum() / counts.sum() > 0.3, key


def test_planted_factors_beat_popularity(medium: Path) -> None:
    """Oracle top-20 (u.v / T + log_pop) hits held-out events far more often than popularity."""
    events = read(medium, "interactions")
    users, items = events["user_id"].to_numpy() - 1, events["item_id"].to_numpy() - 1
    truth = np.load(medium / "synthetic_truth.npz")
    held_out = np.random.default_rng(0).random(len(users)) < 0.2
    popular = np.argsort(-np.bincount(items[~held_out], minlength=2000))[:20]
    pop_hits = np.isin(items[held_out], popular).mean()
    # Score per archetype (identical factors), not per user, to stay fast.
    arch = truth["user_archetype"][users[held_out]]
    reps = np.unique(arch, return_index=True)[1]
    factors = truth["user_factors"][users[held_out][reps]]  # (A, dim)
    scores = factors @ truth["item_factors"].T / truth["temperature"] + truth["item_log_pop"]
    top = np.argpartition(-scores, 20, axis=1)[:, :20]  # (A, 20)
    row = np.searchsorted(np.unique(arch), arch)
    oracle_hits = (top[row] == items[held_out][:, None]).any(axis=1).mean()
    assert oracle_hits > 1.5 * pop_hits, (oracle_hits, pop_hits)


def test_ratings_follow_affinity(medium: Path) -> None:
    events = read(medium, "interactions")
    truth = np.load(medium / "synthetic_truth.npz")
    u, i = events["user_id"].to_numpy() - 1, events["item_id"].to_numpy() - 1
    affinity = np.einsum("ij,ij->i", truth["user_factors"][u], truth["item_factors"][i])
    assert np.corrcoef(affinity, events["rating"].to_numpy())[0, 1] > 0.4


def nearest_centroid_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Fit class means on the first half, accuracy on the second half."""
    half = len(x) // 2
    classes = np.unique(labels[:half])
    centroids = np.stack([x[:half][labels[:half] == c].mean(axis=0) for c in classes])
    d = ((x[half:, None, :] - centroids[None]) ** 2).sum(axis=2)
    return float((classes[d.argmin(axis=1)] == labels[half:]).mean())


def test_attributes_carry_factor_signal(medium: Path) -> None:
    users, items = read(medium, "users"), read(medium, "items")
    truth = np.load(medium / "synthetic_truth.npz")
    occupation = users["occupation"].to_numpy(zero_copy_only=False)
    majority = np.unique(occupation, return_counts=True)[1].max() / len(occupation)
    assert nearest_centroid_accuracy(truth["user_factors"], occupation) > 2 * majority
    first_genre = np.array([g[0] for g in items["genres"].to_pylist()])
    majority = np.unique(first_genre, return_counts=True)[1].max() / len(first_genre)
    assert nearest_centroid_accuracy(truth["item_factors"], first_genre) > 2 * majority
    # Age is partly linear in the factor: least squares on one half explains the other.
    x = np.c_[truth["user_factors"], np.ones(len(occupation))]
    age = users["age"].to_numpy().astype(float)
    coef = np.linalg.lstsq(x[:2500], age[:2500], rcond=None)[0]
    residual = age[2500:] - x[2500:] @ coef
    assert 1 - residual.var() / age[2500:].var() > 0.2


def test_release_year_has_a_few_nulls(medium: Path) -> None:
    nulls = read(medium, "items")["release_year"].null_count
    assert 0 < nulls < 0.03 * 2000


def test_temporal_split_has_warm_and_new_users(medium: Path) -> None:
    events = read(medium, "interactions")
    ts = events["event_timestamp"].cast(pa.int64()).to_numpy()
    users = events["user_id"].to_numpy()
    cut = np.quantile(ts, 0.8)
    before, after = set(users[ts < cut]), set(users[ts >= cut])
    assert len(after & before) > 100 and len(after - before) > 100
