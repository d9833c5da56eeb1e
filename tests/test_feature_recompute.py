"""Every event-derived feature, recomputed independently at every window edge.

The feature tables of `recsys.features.build.compute_features` are compared, at a grid of query
times, with values recomputed here in plain Python from the raw events: no ASOF JOIN, no
window function, none of the feature SQL. The fixture has events at equal timestamps and
exactly at (and 1 µs either side of) every trailing-window edge, so a boundary moved by
1 µs or a tie broken the other way changes some compared value. `MUTATIONS` lists such
changes of the SQL; each must make the comparison fail, else a boundary could move unseen.

The semantics compared (the build's documented ones):
- the value visible at t is the entity's latest row stamped ``<= t`` (Feast's
  point-in-time rule); it equals the aggregate of the events strictly before t (for a
  trailing count of d days: those in ``[t - d, t)``); no event before t: no row;
- the tables are built as of ``AS_OF``: events at or after it are never seen, so a query
  after ``AS_OF`` sees the value at ``AS_OF``;
- recent lists are newest first, and the events of one timestamp in descending item_id:
  the build lists a group by ascending (item_id, rating), then reverses the whole history
  (a user has at most one event per (item, timestamp), so the rating never decides).
"""

from __future__ import annotations

import importlib
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from recsys.features.build import compute_features
from recsys.features.catalog import CATALOG
from recsys.features.spec import View, ViewKind
from tests.conftest import event, item, user, write_dataset

# The SQL changes that must fail the recompute: (id, "module:function" whose output is
# patched, fragment of its output, replacement). Every replacement applies to all
# occurrences, and a fragment no longer in the output fails the test (re-point it).
# Not listed: `<` -> `<=` on item_popularity's as_of filter changes nothing (the cut of the
# change points at as_of drops the row an event at as_of would add): an equivalent mutant.
RENDER = "recsys.features.render"
ITEMS_SQL, USERS_SQL = f"{RENDER}:item_events_sql", f"{RENDER}:user_events_sql"
RECENT = 3  # recent_items of the build: fewer than user 1's four events at T
MUTATIONS = [
    ("trailing-exit-7d-at-window", ITEMS_SQL,
     "INTERVAL 7 DAY + INTERVAL 1 MICROSECOND", "INTERVAL 7 DAY"),
    ("trailing-exit-30d-at-window", ITEMS_SQL,
     "INTERVAL 30 DAY + INTERVAL 1 MICROSECOND", "INTERVAL 30 DAY"),
    ("window-7d-is-8d", ITEMS_SQL, "INTERVAL 7 DAY", "INTERVAL 8 DAY"),
    ("item-entry-stamped-at-ts", ITEMS_SQL,
     "event_timestamp + INTERVAL 1 MICROSECOND AS t", "event_timestamp AS t"),
    ("user-entry-stamped-at-ts", USERS_SQL,
     "ts + INTERVAL 1 MICROSECOND AS event_timestamp", "ts AS event_timestamp"),
    ("user-as-of-inclusive", USERS_SQL,
     "WHERE e.event_timestamp < ", "WHERE e.event_timestamp <= "),
    ("item-change-points-past-as-of", ITEMS_SQL,
     "FROM deltas WHERE t <= ", "FROM deltas WHERE t - INTERVAL 3650 DAY <= "),
    ("user-mean-counts-unrated", USERS_SQL, "count(e.rating) AS rating_n", "count(*) AS rating_n"),
    ("item-mean-counts-unrated", ITEMS_SQL,
     "(rating IS NOT NULL)::INT AS d_rating_n", "1 AS d_rating_n"),
    ("affinity-denominator-rated-only", USERS_SQL, "/ sum(n) OVER w", "/ sum(rating_n) OVER w"),
    ("recent-oldest-first", USERS_SQL, "list_reverse(flatten(", "(flatten("),
    ("recent-ties-descending", USERS_SQL,
     "ORDER BY e.item_id, e.rating", "ORDER BY e.item_id DESC, e.rating"),
    ("recent-frame-one-group-short", USERS_SQL,
     f"{RECENT - 1} PRECEDING AND CURRENT ROW", f"{RECENT - 2} PRECEDING AND CURRENT ROW"),
    ("recent-unrated-as-zero", USERS_SQL, "coalesce(e.rating, 'NaN'::DOUBLE)", "coalesce(e.rating, 0.0)"),
    ("recent-times-rounded", USERS_SQL,
     "CAST(floor(epoch_us(e.event_timestamp) / 1000000.0) AS BIGINT)",
     "CAST(epoch_us(e.event_timestamp) / 1000000.0 AS BIGINT)"),
]  # fmt: skip

US = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = datetime(2024, 3, 1, 12, tzinfo=UTC)
D7, D30 = timedelta(days=7), timedelta(days=30)
AS_OF = T + timedelta(days=40)
Event = dict[str, Any]


@dataclass(frozen=True)
class Context:
    genres: list[str]  # the vocabulary, sorted: the order of user_genre_affinity
    item_genres: dict[int, list[str]]
    recent: int


def _mean(ratings: Iterable[float | None]) -> float | None:
    rated = [r for r in ratings if r is not None]
    return sum(rated) / len(rated) if rated else None


def _newest(evs: list[Event], ctx: Context) -> list[Event]:
    return sorted(evs, key=lambda e: (e["event_timestamp"], e["item_id"]), reverse=True)[
        : ctx.recent
    ]


def _trailing(days: int) -> Callable[[list[Event], datetime, Context], int]:
    return lambda evs, t, ctx: sum(e["event_timestamp"] >= t - timedelta(days=days) for e in evs)


# Per catalogue feature: its value from the entity's events strictly before t (never empty).
RULES: dict[str, Callable[[list[Event], datetime, Context], Any]] = {
    "user_interaction_count": lambda evs, t, ctx: len(evs),
    "user_mean_rating": lambda evs, t, ctx: _mean(e["rating"] for e in evs),
    "user_genre_affinity": lambda evs, t, ctx: [
        sum(g in ctx.item_genres[e["item_id"]] for e in evs) / len(evs) for g in ctx.genres
    ],
    "recent_item_ids": lambda evs, t, ctx: [e["item_id"] for e in _newest(evs, ctx)],
    "recent_item_ratings": lambda evs, t, ctx: [
        math.nan if e["rating"] is None else e["rating"] for e in _newest(evs, ctx)
    ],
    "recent_item_timestamps": lambda evs, t, ctx: [
        (e["event_timestamp"] - EPOCH) // timedelta(seconds=1) for e in _newest(evs, ctx)
    ],
    "item_interaction_count": lambda evs, t, ctx: len(evs),
    "item_mean_rating": lambda evs, t, ctx: _mean(e["rating"] for e in evs),
    "item_count_7d": _trailing(7),
    "item_count_30d": _trailing(30),
}
WINDOWS = (D7, D30)  # every trailing window of RULES: the grid probes both of its edges


def event_views() -> list[View]:
    """The catalogue's event-derived views; every feature of them must have a rule."""
    views = [v for v in CATALOG.views if v.kind in (ViewKind.USER_EVENTS, ViewKind.ITEM_EVENTS)]
    names = {f.name for v in views for f in v.features}
    if missing := sorted(names - RULES.keys()):
        raise LookupError(f"no recompute rule for feature(s) {missing}: add one to RULES")
    if stale := sorted(RULES.keys() - names):
        raise LookupError(f"recompute rules for features not in the catalogue: {stale}")
    return views


def query_times(events: list[Event], as_of: datetime) -> list[datetime]:
    """Every event time, 7 d and 30 d after it, each ±1 µs; and as_of ±1 µs."""
    times = {as_of - US, as_of, as_of + US}
    for e in events:
        for shift in (timedelta(0), *WINDOWS):
            times |= {e["event_timestamp"] + shift + d for d in (-US, timedelta(0), US)}
    return sorted(times)


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, want, got))
    if want is None:  # a missing scalar: null or NaN
        return got is None or (isinstance(got, float) and math.isnan(got))
    if isinstance(want, int):
        return type(got) is int and got == want
    if isinstance(got, float) and math.isnan(want):
        return math.isnan(got)
    return isinstance(got, float) and math.isclose(got, want, rel_tol=1e-6)  # float32 lists


def recompute_mismatches(dataset: Path, features: Path, as_of: datetime, recent: int) -> list[str]:
    """Where the feature tables in ``features`` differ from the recompute: one line each."""
    events = pq.read_table(dataset / "interactions.parquet").to_pylist()
    items = pq.read_table(dataset / "items.parquet").to_pylist()
    item_genres = {i["item_id"]: i["genres"] or [] for i in items}
    ctx = Context(sorted({g for gs in item_genres.values() for g in gs}), item_genres, recent)
    times = query_times(events, as_of)
    out = []
    for view in event_views():
        rows: dict[int, list[dict[str, Any]]] = {}
        for row in pq.read_table(features / f"{view.name}.parquet").to_pylist():
            rows.setdefault(row[view.key], []).append(row)
        for key in sorted({e[view.key] for e in events} | rows.keys()):
            mine = [e for e in events if e[view.key] == key]
            table = sorted(rows.get(key, []), key=lambda r: r["event_timestamp"])
            stamps = [r["event_timestamp"] for r in table]
            if len(set(stamps)) < len(stamps):
                out.append(f"{view.name} {view.key}={key}: two rows with one event_timestamp")
            for t in times:
                seen = min(t, as_of)
                before = [e for e in mine if e["event_timestamp"] < seen]
                i = bisect_right(stamps, t)
                row = table[i - 1] if i else None
                where = f"{view.name} {view.key}={key} at {t.isoformat()}"
                if row is None or not before:
                    if row is not None or before:
                        out.append(f"{where}: {len(before)} events before, row {row}")
                    continue
                for f in view.features:
                    want = RULES[f.name](before, seen, ctx)
                    if not _same(want, row[f.name]):
                        out.append(f"{where}: {f.name} = {row[f.name]!r}, expected {want!r}")
    return out


def _at(when: datetime) -> str:
    return when.isoformat(sep=" ").removesuffix("+00:00")


def recompute_events() -> list[Event]:
    h, d = timedelta(hours=1), timedelta(days=1)
    rows = [
        # User 1: four events at T (more than RECENT), two tied at T + 1 d, one unrated each.
        (1, 10, T, 5.0), (1, 11, T, 1.0), (1, 12, T, None), (1, 13, T, 3.0),
        (1, 14, T + h, 4.0), (1, 11, T + d, None), (1, 15, T + d, 2.0), (1, 12, T + 2 * d, 4.0),
        # Item 10: three events at T, then events at T + 7 d and T + 30 d, and 1 µs either side.
        (2, 10, T, 2.0), (3, 10, T, None),
        (2, 10, T + D7 - US, 4.0), (3, 10, T + D7, None), (4, 10, T + D7 + US, 3.0),
        (4, 10, T + D30 - US, 1.0), (5, 10, T + D30, 2.0), (2, 10, T + D30 + US, None),
        # User 5: one event a day (recent list across groups of one); one at AS_OF and one after
        # it, which the build must not see.
        (5, 11, T + 3 * d, 3.0), (5, 12, T + 4 * d, None), (5, 13, T + 5 * d, 4.0),
        (5, 14, T + 6 * d, 5.0), (5, 13, AS_OF, 1.0), (5, 11, AS_OF + d, 5.0),
        # User 6 and item 15: unrated only (no mean), a tie of two; item 14 has no genres.
        (6, 14, T + 2 * d, None), (6, 13, T + 9 * d, None), (6, 15, T + 9 * d, None),
    ]  # fmt: skip
    return [event(u, i, _at(when), rating) for u, i, when, rating in rows]


@pytest.fixture(scope="module")
def recompute_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("recompute"),
        users=[user(u) for u in range(1, 8)],  # user 7 has no events
        items=[
            item(10, ["Drama"]),
            item(11, ["Comedy"]),
            item(12, ["Drama", "Comedy"]),
            item(13, ["Action"]),
            item(14, []),
            item(15, ["Drama"]),
            item(16, ["Comedy"]),  # no events
        ],
        interactions=recompute_events(),
    )


def _build(dataset: Path, out: Path) -> Path:
    return _build_as_of(dataset, out, AS_OF)


def _build_as_of(dataset: Path, out: Path, as_of: datetime) -> Path:
    out.mkdir(exist_ok=True)
    compute_features(dataset, out, as_of=as_of, recent_items=RECENT)
    return out


def test_fixture_probes_the_edges(recompute_dataset: Path) -> None:
    """The fixture holds what the mutations need: ties, window edges ±1 µs, unrated events."""
    events = pq.read_table(recompute_dataset / "interactions.parquet").to_pylist()
    item10 = {e["event_timestamp"] - T for e in events if e["item_id"] == 10}
    assert {w + s for w in WINDOWS for s in (-US, timedelta(0), US)} <= item10
    assert sum(e["user_id"] == 1 and e["event_timestamp"] == T for e in events) > RECENT
    assert any(e["rating"] is None for e in events)
    assert any(e["event_timestamp"] == AS_OF for e in events)


def test_features_equal_the_recompute(recompute_dataset: Path, tmp_path: Path) -> None:
    features = _build(recompute_dataset, tmp_path)
    assert recompute_mismatches(recompute_dataset, features, AS_OF, RECENT) == []


@pytest.mark.parametrize(
    ("target", "old", "new"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_mutation_is_caught(
    recompute_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    old: str,
    new: str,
) -> None:
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    calls = []

    def mutated(*args: Any, **kwargs: Any) -> str:
        sql = original(*args, **kwargs)
        assert old in sql, f"stale mutation: {old!r} is not in the output of {target}"
        calls.append(name)
        return sql.replace(old, new)

    monkeypatch.setattr(module, name, mutated)
    features = _build(recompute_dataset, tmp_path)
    assert calls, f"the build never called {target}: re-point the mutation"
    assert recompute_mismatches(recompute_dataset, features, AS_OF, RECENT)


def test_a_feature_without_a_rule_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(RULES, "item_count_30d")
    with pytest.raises(LookupError, match="no recompute rule for feature.*item_count_30d"):
        event_views()


def test_items_with_null_genres_count_in_no_genre(tmp_path: Path) -> None:
    """An item with null genres (allowed: only item_id is required) counts in no genre, so a
    user whose events so far are all on such items has a share of 0 per genre, not null."""
    dataset = write_dataset(
        tmp_path / "dataset",
        users=[user(1)],
        items=[item(10, ["Drama"]), {**item(11), "genres": None}],
        interactions=[event(1, 11, _at(T)), event(1, 10, _at(T + D7))],
    )
    as_of = T + D30
    features = _build_as_of(dataset, tmp_path / "features", as_of)
    assert recompute_mismatches(dataset, features, as_of, RECENT) == []
