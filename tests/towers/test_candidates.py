"""towers.candidates.top_k: every known user's best unseen items, scored a block of users at a
time, the block sized to the catalogue (towers.evaluate.user_block)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

import towers.evaluate as evaluate
from towers.candidates import top_k


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(37, 5)).astype(np.float32)
    vectors = rng.normal(size=(23, 5)).astype(np.float32)
    seen = sp.random(37, 23, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    seen.data[:] = 1.0
    seen[3, :] = 1.0  # a user who has seen every item
    return queries, vectors, sp.csr_matrix(seen)


def test_top_k_is_each_users_best_unseen_items_best_first():
    queries, vectors, seen = _case()
    positions, scores = top_k(queries, vectors, seen, k=6)
    full = queries @ vectors.T
    full[seen.toarray() > 0] = -np.inf
    for u in range(len(queries)):
        expected = np.sort(full[u])[::-1][:6]
        np.testing.assert_allclose(scores[u], expected, rtol=1e-6)
        finite = np.isfinite(scores[u])
        np.testing.assert_allclose(full[u, positions[u][finite]], scores[u][finite], rtol=1e-6)
        assert not (seen[u, positions[u][finite]].toarray() > 0).any()
    assert np.isneginf(scores[3]).all()  # nothing left to recommend


def test_top_k_blocks_shrink_with_the_catalogue(monkeypatch):
    """Room for 2 users' scores a block: the same result as one block of every user."""
    queries, vectors, seen = _case(1)
    whole = top_k(queries, vectors, seen, k=4)
    calls: list[int] = []
    topk = torch.topk

    def counted(s, k, dim):
        calls.append(len(s))
        return topk(s, k, dim=dim)

    monkeypatch.setattr(evaluate, "BLOCK_CELLS", 2 * 23)
    monkeypatch.setattr(torch, "topk", counted)
    blocked = top_k(queries, vectors, seen, k=4)
    assert max(calls) == 2 and sum(calls) == len(queries)
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_allclose(blocked[1], whole[1], rtol=1e-6)  # BLAS may sum in another order
