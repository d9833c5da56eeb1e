"""Synthetic dataset with planted structure, in the canonical folder shape (``recsys.schema``).

Generative model (every step is seeded, so the same arguments give the same tables):

* The world (item factors and popularity, user archetypes and activity, the oracle) is
  planted by :mod:`recsys.datasets.planted`. An event picks its user by activity weight and
  then its item from the user's archetype CDF: one ``np.searchsorted`` per event.
* Each user has an active window inside ``[start, start + days)`` (random start, lognormal
  length); event times are uniform in it and rounded to the second (ties happen naturally).
  A temporal split therefore sees warm users, users who left and users not yet seen.
* Ratings are ``round(RATING_BASE + u . v + noise)`` clipped to 1..5: correlated with affinity.
* Attributes come from a noisy copy of the factor (``u + noise``; ``v + noise``) through fixed
  random projections: occupation and zip-code region by argmax, age and gender by a linear
  score, genres as the top 1-3 genre projections, release year linear with ~1% nulls.
  They carry signal about the factors without giving them away.

Events are made in fixed blocks of ``BLOCK`` rows, each with its own RNG stream derived from
``(seed, block index)``; ``chunk_size`` only sets the parquet row-group size and how many rows
are buffered, so the data does not depend on it. Users may meet the same item more than once
(an event log, not a rating matrix). ``synthetic_truth.npz`` holds the planted factors so an
oracle ranking ``u . v / temperature + log_pop`` can be computed. Rows are not time-sorted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.datasets.planted import (
    CDF_TOP,
    World,
    build_world,
    default_sizes,
    gaussian_factors,
    truth_of,
)
from recsys.schema import INTERACTIONS, stamped_at_epoch
from recsys.schema import ITEMS_UNSTAMPED as ITEMS
from recsys.schema import USERS_UNSTAMPED as USERS

log = logging.getLogger(__name__)

BLOCK = 1 << 18  # rows per RNG block; part of the data's identity, do not change lightly
RATING_BASE = 2.0  # sampled items have u.v ~ 1.6 on average (selection), so mean rating ~ 3.7
FEATURE_NOISE = 0.5  # std of the noise added to factors before deriving attributes

OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticSummary:
    """What was generated; events lie in ``[start, end)``."""

    n_users: int
    n_items: int
    n_interactions: int
    start: datetime
    end: datetime


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)  # epsilon: a single user or item has std 0


def _users_table(rng: np.random.Generator, w: World) -> pa.Table:
    n, dim = len(w.user_arch), w.arch_factors.shape[1]
    proj = rng.standard_normal((dim, len(OCCUPATIONS) + 10 + 2)).astype(np.float32)
    f = w.arch_factors[w.user_arch] + FEATURE_NOISE * gaussian_factors(rng, n, dim)
    s = f @ proj  # (U, 20 occupations + 10 zip regions + age + gender)
    occ = np.argmax(s[:, : len(OCCUPATIONS)], axis=1)
    region = np.argmax(s[:, len(OCCUPATIONS) : -2], axis=1)
    age = np.clip(np.rint(38 + 8 * _z(s[:, -2]) + rng.normal(0, 5, n)), 18, 70)
    male = _z(s[:, -1]) + rng.normal(0, 0.5, n) > 0
    zips = pa.array(region * 10_000 + rng.integers(0, 10_000, n)).cast(pa.string())
    return pa.table(
        {
            "user_id": pa.array(np.arange(1, n + 1)),
            "age": pa.array(age.astype(np.int64)),
            "gender": pc.take(pa.array(["F", "M"]), pa.array(male.astype(np.int64))),
            "occupation": pc.take(pa.array(OCCUPATIONS), pa.array(occ)),
            "zip_code": pc.utf8_lpad(zips, 5, "0"),
        },
        schema=USERS,
    )


def _items_table(rng: np.random.Generator, w: World) -> pa.Table:
    n, dim = w.item_factors.shape
    proj = rng.standard_normal((dim, len(GENRES) + 1)).astype(np.float32)
    s = (w.item_factors + FEATURE_NOISE * gaussian_factors(rng, n, dim)) @ proj
    top = np.argsort(-s[:, : len(GENRES)], axis=1)[:, :3]  # (I, 3) best genres first
    n_genres = rng.choice(np.arange(1, 4), size=n, p=[0.5, 0.3, 0.2])  # 1-3 genres
    keep = np.arange(3) < n_genres[:, None]
    offsets = np.concatenate([[0], np.cumsum(n_genres)]).astype(np.int32)
    genres = pa.ListArray.from_arrays(pa.array(offsets), pc.take(pa.array(GENRES), top[keep]))
    year = np.clip(np.rint(1995 + 12 * _z(s[:, -1]) + rng.normal(0, 6, n)), 1950, 2024)
    ids = np.arange(1, n + 1)
    title = pc.binary_join_element_wise("Item ", pa.array(ids).cast(pa.string()), "")
    return pa.table(
        {
            "item_id": pa.array(ids),
            "title": title,
            "release_year": pa.array(year.astype(np.int64), mask=rng.random(n) < 0.01),
            "genres": genres,
        },
        schema=ITEMS,
    )


def _event_block(
    w: World, rng: np.random.Generator, n: int, start_us: int, secs_max: int
) -> pa.Table:
    """``n`` events: user by activity, item by the user's archetype CDF, time in its window."""
    users = np.searchsorted(w.user_cdf, rng.random(n), side="right")
    arch = w.user_arch[users]
    draws = rng.integers(0, CDF_TOP, size=n, dtype=np.uint32)
    items = np.empty(n, dtype=np.int64)
    order = np.argsort(arch, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(arch, minlength=len(w.item_cdf)))])
    for k in np.flatnonzero(np.diff(bounds)):  # one vectorised search per archetype present
        idx = order[bounds[k] : bounds[k + 1]]
        items[idx] = np.searchsorted(w.item_cdf[k], draws[idx], side="right")
    affinity = np.einsum("ij,ij->i", w.arch_factors[arch], w.item_factors[items])
    rating = np.clip(np.rint(RATING_BASE + affinity + rng.normal(0, 0.8, n)), 1, 5)
    secs = np.floor(w.window_lo[users] + rng.random(n) * w.window_len[users]).astype(np.int64)
    secs = np.minimum(secs, secs_max)  # float rounding must never reach start + days
    return pa.table(
        {
            "user_id": pa.array(users + 1),
            "item_id": pa.array(items + 1),
            "rating": pa.array(rating),
            "event_timestamp": pa.array(
                start_us + secs * 1_000_000, type=INTERACTIONS.field(3).type
            ),
        },
        schema=INTERACTIONS,
    )


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temp path beside ``path``, renamed onto it on success: nothing half-written is seen."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_events(
    w: World, path: Path, n: int, seed: int, start_us: int, secs_max: int,
    chunk_size: int, progress: bool,
) -> None:  # fmt: skip
    """Stream blocks into row groups of exactly ``chunk_size`` rows (last one shorter)."""
    buffer: list[pa.Table] = []
    buffered = 0
    with (
        _atomic(path) as tmp,
        pq.ParquetWriter(tmp, INTERACTIONS, compression="zstd") as writer,
        tqdm(total=n, disable=not progress, unit="ev", desc="synthetic events") as bar,
    ):
        for b, lo in enumerate(range(0, n, BLOCK)):
            rng = np.random.default_rng([seed, 2, b])  # one stream per block, not per chunk
            buffer.append(_event_block(w, rng, min(BLOCK, n - lo), start_us, secs_max))
            buffered += buffer[-1].num_rows
            while buffered >= chunk_size or (buffered and lo + BLOCK >= n):
                table = pa.concat_tables(buffer)
                writer.write_table(table.slice(0, chunk_size), row_group_size=chunk_size)
                buffer, buffered = [table.slice(chunk_size)], max(0, buffered - chunk_size)
            bar.update(min(BLOCK, n - lo))


def generate_synthetic(
    out_dir: Path,
    n_interactions: int,
    *,
    seed: int = 0,
    n_users: int | None = None,
    n_items: int | None = None,
    dim: int = 16,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    days: int = 365,
    chunk_size: int = 1_000_000,
    progress: bool = True,
) -> SyntheticSummary:
    """Write users/items/interactions parquet and ``synthetic_truth.npz`` into ``out_dir``.

    ``n_users`` / ``n_items`` default to :func:`default_sizes`. A naive ``start`` is read as
    UTC. Memory is O(n_users + K * n_items + chunk_size), independent of ``n_interactions``.
    """
    default_users, default_items = default_sizes(n_interactions)
    n_users = default_users if n_users is None else n_users
    n_items = default_items if n_items is None else n_items
    for name, value in [("n_interactions", n_interactions), ("n_users", n_users),
                        ("n_items", n_items), ("dim", dim), ("days", days),
                        ("chunk_size", chunk_size)]:  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start_us = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("synthetic: %d events, %d users, %d items, seed %d -> %s",
             n_interactions, n_users, n_items, seed, out_dir)  # fmt: skip

    world = build_world(np.random.default_rng([seed, 0]), n_users, n_items, dim, days)
    with _atomic(out_dir / "synthetic_truth.npz") as tmp, tmp.open("wb") as f:
        # The oracle's inputs: P(i | u) ∝ exp(item_log_pop + user_factors . item_factors / T).
        np.savez(f, allow_pickle=False, **truth_of(world), user_archetype=world.user_arch)
    attr_rng = np.random.default_rng([seed, 1])
    for name, table in (("users", stamped_at_epoch(_users_table(attr_rng, world))),
                        ("items", stamped_at_epoch(_items_table(attr_rng, world)))):  # fmt: skip
        with _atomic(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd")
    _write_events(world, out_dir / "interactions.parquet", n_interactions, seed, start_us,
                  days * 86_400 - 1, chunk_size, progress)  # fmt: skip
    return SyntheticSummary(n_users, n_items, n_interactions, start, start + timedelta(days=days))
