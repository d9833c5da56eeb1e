"""Each feature's op, both sides: the Python side on an entity's events before t equals the
view SQL's value at t, on sampled rows of the built tables (every row of a static view).

Parametrised over the catalogue: a new feature gets its parity test by being declared, and
a feature whose op has no Python side fails it."""

from __future__ import annotations

import bisect
import dataclasses
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.features.build import compute_features
from recsys.features.catalog import CATALOG
from recsys.features.online import Interaction, ItemGenres
from recsys.features.ops import GenreShares, History
from recsys.features.render import ENTITY_TABLES, item_events_sql
from recsys.features.spec import Encoding, Feature, View, ViewKind

RECENT = 5  # shorter than most histories: the recent lists are cut
SAMPLED = 60  # events around which each feature is compared
US = timedelta(microseconds=1)
# Times around a sampled event: itself, just after, and either side of 1, 7 and 30 days on.
OFFSETS = [
    timedelta(0),
    US,
    *(d + e for d in map(timedelta, (1, 7, 30)) for e in (-US, 0 * US, US)),
]


class Built(NamedTuple):
    tables: Path
    genres: ItemGenres
    as_of: datetime  # the tables hold every value up to here


@pytest.fixture(scope="module")
def built(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("tables")
    manifest = compute_features(dataset, out, recent_items=RECENT)
    return Built(out, ItemGenres.from_items(dataset / "items.parquet", manifest.genres),
                 manifest.as_of)  # fmt: skip


def view_of(feature: Feature) -> View:
    return next(v for v in CATALOG.views if feature in v.features)


def assert_same(py: Any, sql: Any, where: Any) -> None:
    if sql is None or py is None:
        assert py is None and sql is None, where
    elif isinstance(sql, float):
        assert py == pytest.approx(sql, rel=1e-12) or (math.isnan(py) and math.isnan(sql)), where
    elif isinstance(sql, list):
        # NaN equals NaN here (unrated events in the recent ratings).
        np.testing.assert_array_equal(np.asarray(py), np.asarray(sql), err_msg=str(where))
    else:
        assert py == sql and type(py) is type(sql), where


def events_before(events: list[dict[str, Any]], key: str, entity: int, t: Any) -> list[Interaction]:
    """The entity's events strictly before t, newest first in the SQL's order (within one
    time, item id then rating descending: ascending with NULLS LAST, reversed)."""
    rows = [e for e in events if e[key] == entity and e["event_timestamp"] < t]
    rows.sort(key=lambda e: (e["event_timestamp"], e["item_id"], e["rating"] is None,
                             e["rating"] or 0.0), reverse=True)  # fmt: skip
    return [Interaction(e["item_id"], e["rating"], e["event_timestamp"]) for e in rows]


@pytest.mark.parametrize("feature", CATALOG.features(), ids=lambda f: f.name)
def test_python_side_equals_the_sql(feature: Feature, dataset: Path, built: Built) -> None:
    tables, genres, as_of = built
    view = view_of(feature)
    rows = pq.read_table(tables / f"{view.name}.parquet").to_pylist()
    if view.kind == ViewKind.STATIC:
        raw = pq.read_table(dataset / f"{ENTITY_TABLES[view.entity]}.parquet").to_pylist()
        assert len(raw) == len(rows)
        for attributes, row in zip(raw, rows, strict=True):
            assert_same(feature.op.py(attributes), row[feature.name], row)
        return
    # The value at t is the entity's latest row stamped <= t (Feast's as-of read), at times
    # on both sides of every event's own time and of the windows' ends.
    by_entity: dict[int, list[dict[str, Any]]] = {}
    for row in rows:  # sorted by key and time
        by_entity.setdefault(row[view.key], []).append(row)
    events = pq.read_table(dataset / "interactions.parquet").to_pylist()
    rng = np.random.default_rng(1)
    compared = 0
    for k in rng.choice(len(events), size=SAMPLED, replace=False):
        entity = events[k][view.key]
        for offset in OFFSETS:
            t = events[k]["event_timestamp"] + offset
            if t > as_of:
                continue
            stamped = [r["event_timestamp"] for r in by_entity.get(entity, [])]
            at = bisect.bisect_right(stamped, t)
            before = events_before(events, view.key, entity, t)
            assert bool(before) == (at > 0), (entity, t)  # a row only after an event
            if not before:
                continue
            history = History(before, t, RECENT, genres.counts)
            sql = by_entity[entity][at - 1][feature.name]
            assert_same(feature.op.py(history), sql, (entity, t))
            compared += 1
    assert compared >= SAMPLED


def test_an_op_a_view_kind_cannot_compute_is_named(dataset: Path) -> None:
    """An op in a kind of view it has no SQL for fails the build with its name, not with
    wrong values."""
    popularity = CATALOG.view("item_popularity")
    shares = Feature("item_genre_shares", "float32[]", GenreShares(), Encoding.GENRE_SHARES)
    view = dataclasses.replace(popularity, features=(*popularity.features, shares))
    with pytest.raises(NotImplementedError, match="GenreShares.*item_events"):
        item_events_sql(view, dataset, datetime.now(UTC), datetime.now(UTC))
