"""A small random dataset with every case the ops must agree on: events sharing a second,
sub-second times, repeated and unknown items, unrated events, missing and non-ASCII
attributes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ts, write_dataset

GENRES = ["Action", "Comedy", "Drama", "Horror"]
START = ts("2024-01-01 00:00:00")


def random_dataset(folder: Path, seed: int = 0, events: int = 600) -> Path:
    rng = np.random.default_rng(seed)
    ages = [None, 5, 17, 18, 33, 49, 56, 80]
    zips = [None, "", "1", "ñandú", "😀12", "94110"]
    users = [
        {"user_id": u, "age": ages[u % len(ages)], "gender": ["F", "M", None][u % 3],
         "occupation": ["writer", "other", None][u % 3], "zip_code": zips[u % len(zips)]}
        for u in range(1, 31)
    ]  # fmt: skip
    items = [
        {"item_id": i, "title": f"Item {i}", "release_year": None if i % 5 == 0 else 1990 + i,
         "genres": [g for g in GENRES if rng.random() < 0.4]}
        for i in range(1, 13)
    ]  # fmt: skip
    # 200 distinct times over 40 days (some with microseconds): many events share a second.
    times = [
        START + timedelta(seconds=int(s), microseconds=int(us))
        for s, us in zip(
            rng.integers(0, 40 * 86_400, 200), rng.integers(0, 3, 200) * 250_000, strict=True
        )
    ]
    interactions = [
        {"user_id": int(rng.integers(1, 31)), "item_id": int(rng.integers(1, 15)),  # 13, 14 unknown
         "rating": None if rng.random() < 0.2 else float(rng.integers(2, 11)) / 2,
         "event_timestamp": times[int(rng.integers(0, len(times)))]}
        for _ in range(events)
    ]  # fmt: skip
    return write_dataset(folder, users, items, interactions)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_dataset(tmp_path_factory.mktemp("features") / "dataset")
