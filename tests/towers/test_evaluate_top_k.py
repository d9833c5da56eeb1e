"""The ranking at the heart of every metric: ``_top_k`` against its definition (sort by score,
ties by a random order of the columns) on rows with ties, -inf (seen items) and fewer finite scores than k,
and blocks of users bounded by score cells on large catalogues."""

from __future__ import annotations

import numpy as np
import pytest

from towers.evaluate import BLOCK_CELLS, SAMPLE_SHARE, _top_k, user_block


def by_definition(s: np.ndarray, k: int, order: np.ndarray) -> np.ndarray:
    """Each row sorted by score, ties by position in ``order``; its first k."""
    prio = np.argsort(order)
    return np.array([np.lexsort((prio, -row))[:k] for row in s])


def scores(rng: np.random.Generator, kind: str, b: int, n: int) -> np.ndarray:
    if kind == "distinct":
        return rng.random((b, n))
    if kind == "few values":  # ties everywhere, at the k-th place too
        return rng.integers(0, 3, (b, n)).astype(np.float32)
    if kind == "mostly -inf":  # seen items; some rows with fewer finite scores than k
        return np.where(rng.random((b, n)) < 0.8, -np.inf, rng.random((b, n)))
    return np.zeros((b, n), np.float32)


@pytest.mark.parametrize("kind", ["distinct", "few values", "mostly -inf", "all equal"])
def test_top_k_is_the_sorted_prefix(kind):
    rng = np.random.default_rng(7)
    for _ in range(40):
        b, n = int(rng.integers(1, 6)), int(rng.integers(1, 40 * SAMPLE_SHARE))
        k = int(rng.integers(1, min(n, 60) + 1))
        s, order = scores(rng, kind, b, n), rng.permutation(n)
        assert np.array_equal(_top_k(s, k, order), by_definition(s, k, order)), (b, n, k)


def test_top_k_on_columns_in_an_adversarial_order():
    # Ascending scores, sampled in that order: the sample holds the worst, a bound far too low.
    s = np.tile(np.arange(1000, dtype=np.float32), (3, 1))
    order = np.arange(1000)
    assert np.array_equal(_top_k(s, 5, order), by_definition(s, 5, order))


def test_user_blocks_shrink_with_the_catalogue():
    assert user_block(1024, 1682) == 1024
    assert user_block(1024, 100_000) == BLOCK_CELLS // 100_000
    assert user_block(1024, 10 * BLOCK_CELLS) == 1
