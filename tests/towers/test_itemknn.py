"""ItemKNN on tiny data: sparse shrunk cosine neighbours against the dense definition (ties,
items with fewer co-occurring items than k, several blocks), the co-occurring item
recommended, the (neighbours, shrink) choice made on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.towers.test_baselines import DAY0, END, START, clustered, frame
from towers.evaluate import build_eval_split, rank_metrics
from towers.itemknn import (
    BYTES_PER_NONZERO,
    ItemKNN,
    itemknn_search,
    neighbour_weights,
    top_neighbours,
    tune_itemknn,
)


def dense_knn(x: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """W by the definition: float32 shrunk cosine, each column's k largest off-diagonal
    values (ties to the lower item), zeros dropped."""
    x = x.astype(np.float32)
    c = x.T @ x
    norms = np.sqrt(np.diag(c))
    s = c / (norms[:, None] * norms[None, :] + shrink + 1e-12)
    np.fill_diagonal(s, -np.inf)
    w = np.zeros_like(s)
    for j in range(len(s)):
        top = np.argsort(-s[:, j], kind="stable")[:k]
        w[top, j] = np.maximum(s[top, j], 0)
    return w


def kept(w: np.ndarray) -> list[list[float]]:
    """Each column's nonzero weights, sorted: the multiset a tie at the k-th place keeps."""
    return [sorted(col[col > 0].tolist()) for col in w.T]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_neighbours_equal_the_dense_definition(seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((40, 15)) < 0.2).astype(np.float32)
    x[:, 14] = 0  # an item nobody had: no neighbours, no NaN
    x[:, 13] = 0
    x[0, 13] = 1  # an item with one user: fewer co-occurring items than k
    x[:, 12] = x[:, 11]  # identical columns: tied similarities to every other item
    shrinks = (0.0, 5.0, 50.0)
    # Blocks of a few target items each: the path large catalogues take.
    lists = top_neighbours(sp.csr_matrix(x), 6, shrinks, block_bytes=BYTES_PER_NONZERO * 40)
    assert len(lists) == len(shrinks)
    for shrink, nb in zip(shrinks, lists, strict=True):
        lengths = np.diff(nb.indptr)
        assert nb.indptr[-1] == len(nb.items) == len(nb.sims) and (lengths <= 6).all()
        assert lengths[14] == 0 and lengths[13] == min(6, int(x[0].sum()) - 1)
        assert (nb.sims > 0).all()  # zeros are never neighbours
        assert (nb.items != np.repeat(np.arange(15), lengths)).all()  # never its own
        for j in range(15):
            sims = nb.sims[nb.indptr[j] : nb.indptr[j + 1]]
            assert (np.diff(sims) <= 0).all()  # best first
        for k in (1, 3, 6):  # the one list, cut to each shorter k
            w = neighbour_weights(nb, k)
            assert sp.issparse(w) and w.nnz <= 15 * k
            expected = dense_knn(x, k, shrink)
            assert kept(w.toarray()) == kept(expected)
            assert np.array_equal(w.toarray(), expected)  # ties go to the lower item too
    with pytest.raises(ValueError, match="k must be"):
        top_neighbours(sp.csr_matrix(x), 0, (0.0,))
    with pytest.raises(ValueError, match="shrinks"):
        top_neighbours(sp.csr_matrix(x), 2, (-1.0,))


def test_one_block_or_many_give_the_same_neighbours():
    x = sp.csr_matrix((np.random.default_rng(4).random((60, 30)) < 0.15).astype(np.float32))
    (one,) = top_neighbours(x, 5, (10.0,))
    (many,) = top_neighbours(x, 5, (10.0,), block_bytes=1)  # one target item a block
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a, b)


def test_itemknn_scores_are_history_times_the_dense_weights():
    events = clustered()
    start = DAY0 + pd.Timedelta(days=14)
    split = build_eval_split(events, np.arange(40), start, None)
    train = events[events.event_timestamp < start]
    model = ItemKNN(k=7, shrink=20.0).fit(train, np.arange(40))
    x = model.matrix_.toarray()
    scores = model.scores(split)
    known = np.isin(split.user_ids, model.user_ids_)
    rows = np.searchsorted(model.user_ids_, split.user_ids[known])
    assert known.any()
    assert np.allclose(scores[known], x[rows] @ dense_knn(x, 7, 20.0), atol=1e-5)


def test_itemknn_recommends_the_co_occurring_item():
    # Items A=0, B=1; C..E are noise, and E=4 is the most popular. Everyone who had A had B.
    rows = [(u, i, 1) for u in range(6) for i in (0, 1)]
    rows += [(u, 4, 2) for u in range(6, 16)] + [(6, 2, 2), (7, 3, 2), (8, 2, 2), (9, 3, 2)]
    rows += [(20, 0, 3)]  # the new user has only A
    train = frame(rows)
    window = frame([(20, 1, 12), (21, 4, 13)])  # user 21 has no history: popularity
    split = build_eval_split(pd.concat([train, window]), np.arange(5), START, END)
    model = ItemKNN(k=2, shrink=0.0).fit(train, np.arange(5))
    scores = model.scores(split)
    assert split.user_ids.tolist() == [20, 21]
    assert int(np.argmax(np.where(split.seen.toarray()[0] > 0, -np.inf, scores[0]))) == 1
    assert scores[1].tolist() == [7, 6, 2, 2, 10]  # the cold user: popularity counts
    assert rank_metrics(scores, split, ks=(1,))["all"]["recall@1"] == 1.0
    with pytest.raises(ValueError, match="leak"):
        ItemKNN().fit(pd.concat([train, window]), np.arange(5)).scores(split)


def test_itemknn_choice_is_made_on_validation():
    events = clustered()
    val_start, val_end = DAY0 + pd.Timedelta(days=14), DAY0 + pd.Timedelta(days=40)
    val = build_eval_split(events, np.arange(40), val_start, val_end)
    train = events[events.event_timestamp < val_start]
    tried = itemknn_search(train, val, np.arange(40), neighbours=(1, 5, 30), shrinks=(0, 20), k=10)
    assert list(tried) == [(1, 0.0), (5, 0.0), (30, 0.0), (1, 20.0), (5, 20.0), (30, 20.0)]
    assert len(set(tried.values())) > 1  # the choice matters on this data
    for (n, shrink), recall in tried.items():  # each is the model with those settings
        model = ItemKNN(n, shrink).fit(train, np.arange(40))
        assert recall == rank_metrics(model.scores(val), val, ks=(10,))["all"]["recall@10"]
    default = itemknn_search(train, val, np.arange(40), k=10)
    chosen = tune_itemknn(train, val, np.arange(40), k=10)
    assert default[chosen] == max(default.values()) > min(default.values())
    with pytest.raises(ValueError, match="leak"):
        itemknn_search(events, val, np.arange(40), neighbours=(5,), shrinks=(0,), k=10)
