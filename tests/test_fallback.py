"""The fallback version's pieces (tier 1): which baseline, its ranking, its candidates."""

import numpy as np
import pandas as pd
import pytest

from recsys import fallback

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def events(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, day) rows as interactions."""
    return pd.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                         "event_timestamp": [T0 + pd.Timedelta(days=r[2]) for r in rows]})  # fmt: skip


def test_choose_the_best_servable_baseline_and_say_why():
    metrics = {"models": {"popularity": {"all": {"recall@20": 0.28}},
                          "EASE": {"all": {"recall@20": 0.31}},
                          "two-tower (softmax)": {"all": {"recall@20": 0.25}}}}  # fmt: skip
    name, why = fallback.choose(metrics)
    assert name == "popularity"  # EASE scores higher but cannot be served without a model
    assert "0.2800" in why and "not servable as a fallback: ['EASE']" in why
    with pytest.raises(ValueError, match="no recall@20 of a servable baseline.*lists \\['EASE'\\]"):
        fallback.choose({"models": {"EASE": {"all": {"recall@20": 0.3}}}})


def test_ranking_counts_events_before_as_of_ties_by_item_id():
    data = events([(1, 10, 0), (2, 10, 1), (1, 20, 1), (3, 30, 2), (4, 30, 9), (5, 30, 9)])
    table = fallback.ranking(data, np.array([30, 20, 10, 40]), T0 + pd.Timedelta(days=5))
    assert table.column("item_id").to_pylist() == [10, 20, 30, 40]
    assert table.column("score").to_pylist() == [2.0, 1.0, 1.0, 0.0]


def test_candidates_are_the_most_popular_unseen_items(tmp_path):
    import pyarrow.parquet as pq

    data = events([(1, 10, 0), (2, 10, 1), (3, 10, 1), (1, 20, 1), (2, 20, 1), (3, 30, 2)])
    items = np.array([10, 20, 30, 40])
    as_of = T0 + pd.Timedelta(days=5)
    pq.write_table(fallback.ranking(data, items, as_of), tmp_path / fallback.RANKING)
    table = fallback.candidates(tmp_path, data, items, as_of, "v1", k=2).to_pandas()
    assert table.user_id.tolist() == [1, 2, 3]
    assert [list(c) for c in table.candidate_item_ids] == [[30, 40], [30, 40], [20, 40]]
    assert set(table.model_version) == {"v1"}
    with pytest.raises(ValueError, match="lacks 1 catalogue item"):
        fallback.item_vectors(tmp_path, np.array([10, 50]))
