"""The fallback version's pieces (tier 1): which baseline, its ranking, its candidates."""

import numpy as np
import pandas as pd
import pytest

from evaluation.fallback import candidates, choose, ranking
from recsys import fallback

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def events(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, day) rows as interactions."""
    return pd.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                         "event_timestamp": [T0 + pd.Timedelta(days=r[2]) for r in rows]})  # fmt: skip


def test_choose_the_best_servable_baseline_on_validation_and_say_why():
    on_val = {"popularity": 0.20, "popularity (recent)": 0.24, "EASE": 0.31,
              "segment popularity": 0.22}  # fmt: skip
    metrics = {"models": {"popularity": {"all": {"recall@20": 0.30}},  # best on test
                          "popularity (recent)": {"all": {"recall@20": 0.26}},
                          "EASE": {"all": {"recall@20": 0.31}}},
               "choices": {"validation recall@20": on_val,
                           "popularity (recent)": {"window_days": 30},
                           "segment popularity": {"segmentation": "occupation"}}}  # fmt: skip
    # EASE scores higher but cannot be served without a model; popularity is best on test,
    # but the choice is made on validation.
    name, settings, why = choose(metrics)
    assert (name, settings) == ("popularity (recent)", {"window_days": 30})
    assert "best validation recall@20" in why and "popularity (recent) 0.2400" in why
    assert "test recall@20 0.2600" in why
    metrics["choices"]["validation recall@20"]["segment popularity"] = 0.25
    assert choose(metrics)[:2] == ("segment popularity",
                                            {"segment_fields": ["occupation"]})  # fmt: skip
    metrics["choices"]["validation recall@20"] = {"popularity": 0.3, "EASE": 0.4}
    assert choose(metrics)[:2] == ("popularity", {"window_days": None})
    with pytest.raises(ValueError, match="no choices/'validation recall@20' of a servable"):
        choose({"models": {"EASE": {"all": {"recall@20": 0.3}}}})


def test_recent_popularity_counts_the_trailing_window_before_as_of():
    data = events([(1, 10, 0), (2, 10, 1), (1, 20, 3), (3, 30, 4), (4, 30, 4), (5, 30, 9)])
    as_of = T0 + pd.Timedelta(days=5)
    table = ranking(data, np.array([10, 20, 30]), as_of, window_days=2.5)
    assert table.column("item_id").to_pylist() == [30, 20, 10]
    assert table.column("score").to_pylist() == [2.0, 1.0, 0.0]


def test_segment_ranking_vectors_queries_and_candidates(tmp_path):
    import json

    import pyarrow.parquet as pq

    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "occupation": ["a", "a", "b", None]})
    data = events([(1, 10, 0), (2, 10, 1), (1, 20, 1), (3, 30, 2), (3, 40, 2), (4, 40, 3),
                   (2, 30, 9)])  # fmt: skip
    items = np.array([10, 20, 30, 40])
    as_of = T0 + pd.Timedelta(days=5)
    table = ranking(data, items, as_of, users=users, segment_fields=["occupation"],
                             min_segment_users=1)  # fmt: skip
    frame = table.to_pandas().set_index("item_id")
    assert list(frame.columns) == ["score", "a", "b"]  # global, then one column per segment
    assert frame.score.to_dict() == {10: 2.0, 20: 1.0, 30: 1.0, 40: 2.0}
    # Segment a (users 1, 2) rated 10 twice and 20 once; ties go to the globally popular.
    assert frame.loc[10, "a"] > frame.loc[20, "a"] > frame.loc[40, "a"] > frame.loc[30, "a"]
    assert frame.loc[30, "b"] >= 1 and frame.loc[40, "b"] > frame.loc[30, "b"]
    q = fallback.queries(["b", None, "unknown", "a"], ["a", "b"])
    assert q.tolist() == [[0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert fallback.segment_label({"occupation": "a", "gender": "M"}, ["gender", "occupation"]
                                  ) == "M | a"  # fmt: skip
    assert fallback.segment_label({"occupation": None}, ["occupation"]) is None
    # Candidates: each user's segment column (user 4, no occupation: global popularity).
    pq.write_table(table, tmp_path / fallback.RANKING)
    (tmp_path / "version.json").write_text(json.dumps({"segment_fields": ["occupation"]}))
    assert fallback.item_vectors(tmp_path, items).shape == (4, 3)
    got = candidates(tmp_path, data, items, as_of, "v1", k=1, users=users).to_pandas()
    assert dict(zip(got.user_id, [c[0] for c in got.candidate_item_ids], strict=True)) == {
        1: 40, 2: 20, 3: 10, 4: 10}  # fmt: skip


def test_ranking_counts_events_before_as_of_ties_by_item_id():
    data = events([(1, 10, 0), (2, 10, 1), (1, 20, 1), (3, 30, 2), (4, 30, 9), (5, 30, 9)])
    table = ranking(data, np.array([30, 20, 10, 40]), T0 + pd.Timedelta(days=5))
    assert table.column("item_id").to_pylist() == [10, 20, 30, 40]
    assert table.column("score").to_pylist() == [2.0, 1.0, 1.0, 0.0]


def test_candidates_are_the_most_popular_unseen_items(tmp_path):
    import pyarrow.parquet as pq

    data = events([(1, 10, 0), (2, 10, 1), (3, 10, 1), (1, 20, 1), (2, 20, 1), (3, 30, 2)])
    items = np.array([10, 20, 30, 40])
    as_of = T0 + pd.Timedelta(days=5)
    pq.write_table(ranking(data, items, as_of), tmp_path / fallback.RANKING)
    table = candidates(tmp_path, data, items, as_of, "v1", k=2).to_pandas()
    assert table.user_id.tolist() == [1, 2, 3]
    assert [list(c) for c in table.candidate_item_ids] == [[30, 40], [30, 40], [20, 40]]
    assert set(table.model_version) == {"v1"}
    with pytest.raises(ValueError, match="lacks 1 catalogue item"):
        fallback.item_vectors(tmp_path, np.array([10, 50]))
