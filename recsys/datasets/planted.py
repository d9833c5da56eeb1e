"""The planted world of the synthetic dataset (``recsys.datasets.synthetic``): latent factors,
popularity prior, archetypes and activity, fixed before any event is drawn, and the oracle
that ranks items exactly as the generator draws them.

* Items ``i`` get a latent factor ``v_i ~ N(0, I / sqrt(dim))`` and a Zipf popularity prior
  ``log_pop_i = -ZIPF_EXPONENT * log(rank_i)`` (random ranks, normalised to log-probabilities).
* Users belong to one of ``K`` archetypes (``K <= MAX_ARCHETYPES``); a user's planted factor
  ``u`` is its archetype's centre ``c_k ~ N(0, I / sqrt(dim))``, so ``u . v`` has unit variance.
* An event picks its user by activity weight (lognormal: a few heavy users, a long tail) and
  then its item with ``P(i | u) ∝ exp(log_pop_i + u . v_i / TEMPERATURE)``. Because ``u`` is
  shared by the archetype, that distribution is precomputed once per archetype as an integer
  CDF and sampling is one ``np.searchsorted`` per event: O(log n_items), no scoring per event.
* ``synthetic_truth.npz`` holds the planted factors so an oracle ranking
  ``u . v / temperature + log_pop`` can be computed (:func:`planted_affinity`), or
  :func:`planted_truth` rebuilds them from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TEMPERATURE = 0.5  # softmax temperature of u.v: lower means more personal, less popular-driven
ZIPF_EXPONENT = 0.8  # popularity prior ~ rank^-0.8
ACTIVITY_SIGMA = 1.2  # lognormal user activity: top 10% of users emit ~40% of events
MAX_ARCHETYPES = 512
MAX_CDF_CELLS = 128_000_000  # K * n_items uint32 cells (512 MB) bound the CDF table
MAX_USERS, MAX_ITEMS = 2_000_000, 200_000  # caps of the default sizes
CDF_TOP = np.uint32(2**32 - 1)  # the integer CDF of an archetype ends here


@dataclass(frozen=True)
class World:
    """Everything fixed before events are drawn; shapes in comments (U users, I items)."""

    user_arch: np.ndarray  # (U,) int64 archetype of each user
    arch_factors: np.ndarray  # (K, dim) float32 planted user factors per archetype
    item_factors: np.ndarray  # (I, dim) float32
    item_log_pop: np.ndarray  # (I,) float64 normalised log prior
    item_cdf: np.ndarray  # (K, I) uint32 cumulative P(item | archetype) scaled to 2^32-1
    user_cdf: np.ndarray  # (U,) float64 cumulative activity weights
    window_lo: np.ndarray  # (U,) float64 start of the active window, seconds after start
    window_len: np.ndarray  # (U,) float64 its length in seconds


def default_sizes(n_interactions: int) -> tuple[int, int]:
    """Users ~ n/40 (2M cap) and items ~ n/100 (200K cap), at least 50 each: ML-like density."""
    return (
        min(MAX_USERS, max(50, n_interactions // 40)),
        min(MAX_ITEMS, max(50, n_interactions // 100)),
    )


def gaussian_factors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    # Component variance 1/sqrt(dim) makes u.v have unit variance whatever dim is.
    return (rng.standard_normal((n, dim)) * dim**-0.25).astype(np.float32)


def _item_cdf(arch: np.ndarray, items: np.ndarray, log_pop: np.ndarray) -> np.ndarray:
    """(K, I) uint32 CDFs; float64 only for a few archetype rows at a time to bound memory."""
    cdf = np.empty((len(arch), len(items)), dtype=np.uint32)
    step = max(1, 4_000_000 // len(items))
    for lo in range(0, len(arch), step):
        logits = log_pop + (arch[lo : lo + step] @ items.T).astype(np.float64) / TEMPERATURE
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        c = np.cumsum(p, axis=1)
        # Integer CDF: 2^-32 resolution (float32 would drop items rarer than 2^-24).
        cdf[lo : lo + step] = np.floor(c / c[:, -1:] * float(CDF_TOP)).astype(np.uint32)
        cdf[lo : lo + step, -1] = CDF_TOP
    return cdf


def build_world(rng: np.random.Generator, n_users: int, n_items: int, dim: int, days: int) -> World:
    k = max(1, min(MAX_ARCHETYPES, n_users, MAX_CDF_CELLS // n_items))
    arch_factors = gaussian_factors(rng, k, dim)
    item_factors = gaussian_factors(rng, n_items, dim)
    ranks = rng.permutation(n_items) + 1
    log_pop = -ZIPF_EXPONENT * np.log(ranks)
    log_pop -= np.log(np.exp(log_pop).sum())
    # Every archetype is used at least once when n_users >= k, the rest uniformly.
    user_arch = np.concatenate([rng.permutation(k), rng.integers(0, k, n_users - k)])
    activity = np.cumsum(rng.lognormal(0.0, ACTIVITY_SIGMA, n_users))
    user_cdf = activity / activity[-1]
    user_cdf[-1] = 1.0
    span = days * 86_400.0
    frac = np.clip(rng.lognormal(np.log(0.2), 1.0, n_users), 1.0 / days, 1.0)
    window_lo = rng.random(n_users) * (1.0 - frac) * span
    return World(
        user_arch, arch_factors, item_factors, log_pop,
        _item_cdf(arch_factors, item_factors, log_pop), user_cdf, window_lo, frac * span,
    )  # fmt: skip


def planted_truth(
    n_interactions: int,
    *,
    seed: int = 0,
    n_users: int | None = None,
    n_items: int | None = None,
    dim: int = 16,
    days: int = 365,
) -> dict[str, np.ndarray]:
    """The planted factors of ``generate_synthetic`` with these arguments, rebuilt from the
    seed (the data itself is not generated): what ``synthetic_truth.npz`` holds, for a
    dataset that was ingested without that file."""
    default_users, default_items = default_sizes(n_interactions)
    world = build_world(
        np.random.default_rng([seed, 0]),
        default_users if n_users is None else n_users,
        default_items if n_items is None else n_items,
        dim,
        days,
    )
    return truth_of(world)


def truth_of(world: World) -> dict[str, np.ndarray]:
    """The oracle's inputs (:func:`planted_affinity`) of ``world``."""
    return {
        "user_factors": world.arch_factors[world.user_arch],
        "item_factors": world.item_factors,
        "item_log_pop": world.item_log_pop,
        "temperature": np.float64(TEMPERATURE),
    }


def planted_affinity(truth: Any, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """(U, N) float64 ``log_pop_i + u . v_i / T``: the log of the planted P(item | user) up to
    a per-user constant, so each row ranks items exactly as the generator draws them (the
    oracle). ``truth`` is ``synthetic_truth.npz`` loaded or :func:`planted_truth`; ids are the
    generator's (``index + 1``)."""
    users = truth["user_factors"][np.asarray(user_ids, dtype=np.int64) - 1]  # (U, dim)
    items = np.asarray(item_ids, dtype=np.int64) - 1
    dot = users.astype(np.float64) @ truth["item_factors"][items].astype(np.float64).T  # (U, N)
    return truth["item_log_pop"][items][None, :] + dot / float(truth["temperature"])
