"""ItemKNN on tiny data: shrunk cosine neighbours against a dense computation, the
co-occurring item recommended, the (neighbours, shrink) choice made on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.towers.test_baselines import DAY0, END, START, clustered, frame
from towers.evaluate import build_eval_split, rank_metrics
from towers.itemknn import ItemKNN, itemknn_search, neighbour_weights, top_neighbours, tune_itemknn


def dense_knn(x: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """W by the definition: shrunk cosine, each column's k largest off-diagonal values."""
    c = x.T @ x
    norms = np.sqrt(np.diag(c))
    s = c / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(s, -np.inf)
    w = np.zeros_like(s)
    for j in range(len(s)):
        top = np.argsort(-s[:, j], kind="stable")[:k]
        w[top, j] = np.maximum(s[top, j], 0)
    return w


@pytest.mark.parametrize("shrink", [0.0, 5.0])
def test_neighbours_match_the_dense_definition(shrink):
    rng = np.random.default_rng(3)
    x = (rng.random((30, 12)) < 0.3).astype(np.float32)
    x[:, 11] = 0  # an item nobody had: no neighbours, no NaN
    # Blocks of 5 target columns (5, 5, 2): the path large catalogues take.
    idx, sim = top_neighbours(sp.csr_matrix(x), k=4, shrink=shrink, block_bytes=16 * 12 * 5)
    assert idx.shape == sim.shape == (12, 4)
    assert (idx != np.arange(12)[:, None]).all()  # never its own neighbour
    assert (np.diff(sim, axis=1) <= 1e-7).all()  # best first
    w = neighbour_weights(idx, sim, 4)
    assert sp.issparse(w) and w.nnz <= 12 * 4
    assert np.allclose(w.toarray(), dense_knn(x, 4, shrink), atol=1e-6)
    # Cutting to fewer neighbours keeps the best ones.
    assert np.allclose(neighbour_weights(idx, sim, 2).toarray(), dense_knn(x, 2, shrink), atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        top_neighbours(sp.csr_matrix(x), k=0, shrink=0.0)
    with pytest.raises(ValueError, match="shrink"):
        top_neighbours(sp.csr_matrix(x), k=2, shrink=-1.0)


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
