"""Shared fixtures: tiny canonical datasets written to tmp folders, settings pointing there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.schema import TABLES
from recsys.settings import Settings


def ts(text: str) -> datetime:
    """A UTC datetime from ISO text."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def write_dataset(
    folder: Path,
    users: list[dict[str, Any]],
    items: list[dict[str, Any]],
    interactions: list[dict[str, Any]],
) -> Path:
    """Write a canonical dataset folder from row dicts (exact canonical Arrow types)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("users", users), ("items", items), ("interactions", interactions)):
        pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[name]), folder / f"{name}.parquet")
    return folder


def user(user_id: int, age: int = 30, gender: str = "F", occupation: str = "other") -> dict:
    return {
        "user_id": user_id,
        "age": age,
        "gender": gender,
        "occupation": occupation,
        "zip_code": f"{10000 + user_id}",
    }


def item(item_id: int, genres: list[str] | None = None, year: int | None = 2000) -> dict:
    return {
        "item_id": item_id,
        "title": f"Item {item_id}",
        "release_year": year,
        "genres": genres if genres is not None else ["Drama"],
    }


def event(user_id: int, item_id: int, when: str, rating: float | None = 4.0) -> dict:
    return {"user_id": user_id, "item_id": item_id, "rating": rating, "event_timestamp": ts(when)}


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    """Settings whose data folder is inside this test's tmp_path."""

    def make(dataset: Path | str, **overrides: Any) -> Settings:
        return Settings(data_dir=tmp_path / "data", dataset=str(dataset), **overrides)

    return make


SYNTHETIC_AS_OF = ts("2024-10-01 00:00:00")


@pytest.fixture(scope="session")
def synthetic_build(tmp_path_factory):
    """The whole foundation pipeline on 20K synthetic interactions, built once per session:
    (settings, recsys.pipeline.BuildResult). Events after SYNTHETIC_AS_OF exist but are
    hidden by as_of."""
    from recsys.pipeline import build

    data = tmp_path_factory.mktemp("synthetic") / "data"
    settings = Settings(
        data_dir=data,
        dataset="synthetic",
        synthetic_interactions=20_000,
        synthetic_seed=7,
        as_of=SYNTHETIC_AS_OF,
    )
    return settings, build(settings)
