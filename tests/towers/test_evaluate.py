"""The evaluation protocol on hand-built data: window boundaries, truth, metrics, the report."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from towers.evaluate import EvalSplit, build_eval_split, rank_metrics
from towers.report import report

START, END = pd.Timestamp("2020-01-10", tz="UTC"), pd.Timestamp("2020-01-20", tz="UTC")


def frame(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    """Interactions from (user, item, ISO time) tuples, timestamps in UTC."""
    users, items, when = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "user_id": np.array(users, np.int64),
            "item_id": np.array(items, np.int64),
            "event_timestamp": pd.to_datetime(list(when), utc=True, format="ISO8601"),
        }
    )


def hand_split() -> tuple[EvalSplit, np.ndarray]:
    """3 users, 5 items, and scores whose metrics are worked out in test_rank_metrics_by_hand."""
    seen = np.zeros((3, 5), np.float32)
    seen[0, 0] = seen[1, 2] = 1  # each warm user's highest-scored item was seen before
    split = EvalSplit(
        item_ids=np.array([10, 20, 30, 40, 50]),
        user_ids=np.array([1, 2, 3]),
        truth=[np.array([1, 3]), np.array([3]), np.array([0, 2, 3, 4])],
        seen=sp.csr_matrix(seen),
        warm=np.array([True, True, False]),
    )
    scores = np.array(
        [
            [0.9, 0.5, 0.1, 0.2, 0.8],
            [0.1, 0.2, 0.9, 0.8, 0.4],
            [0.1, 0.5, 0.4, 0.3, 0.2],
        ]
    )
    return split, scores


# Ranks after removing seen items, and the metrics (DCG term at rank r is 1 / log2(r + 1)):
# user 1 (warm): 4, 1, 3, 2; truth {1, 3} hit at ranks 2, 3.
#   @1: recall 0, ndcg 0.  @3: recall 2 / min(3, 2) = 1,
#   ndcg (1/log2 3 + 1/log2 4) / (1 + 1/log2 3) = 1.130930 / 1.630930 = 0.693426
# user 2 (warm): 3, 4, 1, 0 (item 2 scores 0.9 but was seen); truth {3} hit at rank 1.
#   @1: recall 1, ndcg 1.  @3: recall 1 / min(3, 1) = 1, ndcg 1
# user 3 (cold): 1, 2, 3, 4, 0; truth {0, 2, 3, 4} hit at ranks 2, 3.
#   @1: 0, 0.  @3: recall 2 / min(3, 4) = 2/3 (not 2/4),
#   ndcg 1.130930 / (1 + 1/log2 3 + 1/log2 4) = 1.130930 / 2.130930 = 0.530721
EXPECTED = {
    "warm": {"recall@1": 0.5, "ndcg@1": 0.5, "recall@3": 1.0, "ndcg@3": 0.846713, "users": 2},
    "cold": {"recall@1": 0.0, "ndcg@1": 0.0, "recall@3": 2 / 3, "ndcg@3": 0.530721, "users": 1},
    "all": {"recall@1": 1 / 3, "ndcg@1": 1 / 3, "recall@3": 8 / 9, "ndcg@3": 0.741382, "users": 3},
}


def test_rank_metrics_by_hand():
    split, scores = hand_split()
    result = rank_metrics(scores, split, ks=(1, 3))
    for segment, expected in EXPECTED.items():
        assert result[segment]["users"] == expected["users"]
        for name, value in expected.items():
            assert result[segment][name] == pytest.approx(value, abs=1e-6), (segment, name)


def test_seen_items_are_never_ranked():
    split, scores = hand_split()
    # Without the exclusion user 2's top item would be the seen item 2, a miss at K=1.
    unseen = EvalSplit(**{**split.__dict__, "seen": sp.csr_matrix((3, 5), dtype=np.float32)})
    assert rank_metrics(scores, split, ks=(1,))["warm"]["recall@1"] == 0.5
    assert rank_metrics(scores, unseen, ks=(1,))["warm"]["recall@1"] == 0.0


def test_callable_scores_match_the_array_across_blocks():
    split, scores = hand_split()
    calls: list[list[int]] = []

    def score_fn(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.tolist())
        return scores[rows]

    assert rank_metrics(score_fn, split, ks=(1, 3), block_size=2) == rank_metrics(
        scores, split, ks=(1, 3)
    )
    assert calls == [[0, 1], [2]]


def test_empty_segment_is_nan_and_bad_scores_raise():
    split, scores = hand_split()
    all_warm = EvalSplit(**{**split.__dict__, "warm": np.ones(3, bool)})
    cold = rank_metrics(scores, all_warm, ks=(3,))["cold"]
    assert cold["users"] == 0 and math.isnan(cold["recall@3"]) and math.isnan(cold["ndcg@3"])
    with pytest.raises(ValueError, match="scores must be"):
        rank_metrics(scores[:, :4], split)
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(np.full((3, 5), np.nan), split)


def test_ties_are_broken_at_random_not_by_item_index():
    # One user, all scores equal, truth = the first 10 item indices: an index tie-break
    # would give recall@10 = 1; a random one gives 10/100 on average.
    split = EvalSplit(
        item_ids=np.arange(100),
        user_ids=np.array([7]),
        truth=[np.arange(10)],
        seen=sp.csr_matrix((1, 100), dtype=np.float32),
        warm=np.array([False]),
    )
    recalls = [rank_metrics(np.zeros((1, 100)), split, ks=(10,), seed=s)["all"] for s in range(60)]
    mean = np.mean([r["recall@10"] for r in recalls])
    assert 0.03 < mean < 0.2
    assert rank_metrics(np.zeros((1, 100)), split, ks=(10,), seed=3)["all"] == recalls[3]


def test_build_eval_split_boundaries_seen_warm_and_drops(caplog):
    catalogue = np.array([1, 2, 3, 4])
    interactions = frame(
        [
            (100, 1, "2020-01-05"),  # before: seen
            (100, 1, "2020-01-12"),  # in the window but seen before: not truth
            (100, 2, "2020-01-10"),  # exactly at start: in the window
            (100, 3, "2020-01-20"),  # exactly at end: out
            (100, 99, "2020-01-15"),  # not in the catalogue: ignored
            (200, 4, "2020-01-19 23:59:59"),
            (200, 4, "2020-01-11"),  # twice in the window: once in truth
            (300, 2, "2020-01-01"),
            (300, 2, "2020-01-15"),  # every window item seen before: user dropped
            (400, 99, "2020-01-15"),  # only unknown items: not evaluated
            (500, 99, "2020-01-02"),  # history outside the catalogue still makes the user warm
            (500, 3, "2020-01-15"),
            (600, 1, "2020-01-25"),  # after the window only
        ]
    )
    with caplog.at_level(logging.INFO, logger="towers.evaluate"):
        split = build_eval_split(interactions, catalogue, START, END)
    assert split.user_ids.tolist() == [100, 200, 500]
    assert [t.tolist() for t in split.truth] == [[1], [3], [2]]
    assert split.seen.toarray().tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert split.warm.tolist() == [True, False, True]
    assert split.item_ids.tolist() == catalogue.tolist()
    assert (split.start, split.end) == (START, END)
    assert "2 window event(s)" in caplog.text and "1 user(s) dropped" in caplog.text


def test_build_eval_split_takes_naive_cuts_as_utc_and_rejects_bad_input():
    interactions = frame([(1, 1, "2020-01-05"), (1, 2, "2020-01-10")])
    split = build_eval_split(interactions, np.array([1, 2]), "2020-01-10", None)
    assert split.user_ids.tolist() == [1] and split.warm.tolist() == [True]
    assert split.seen.toarray().tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="empty window"):
        build_eval_split(interactions, np.array([1, 2]), END, START)
    with pytest.raises(ValueError, match="duplicates"):
        build_eval_split(interactions, np.array([1, 1]), START, END)
    with pytest.raises(ValueError, match="event_timestamp"):
        build_eval_split(interactions.drop(columns="event_timestamp"), np.array([1]), START, END)


def test_build_eval_split_then_rank_metrics_end_to_end():
    interactions = frame([(1, 1, "2020-01-05"), (1, 2, "2020-01-12"), (2, 3, "2020-01-13")])
    split = build_eval_split(interactions, np.array([1, 2, 3]), START, END)
    # Both users rank item 2 above item 3; user 1 has seen item 1, which scores highest.
    result = rank_metrics(np.tile([9.0, 2.0, 1.0], (2, 1)), split, ks=(1,))
    assert result["warm"]["recall@1"] == 1.0 and result["cold"]["recall@1"] == 0.0


def test_report_writes_json_markdown_and_png(tmp_path):
    split, scores = hand_split()
    results = {
        "oracle": rank_metrics(scores, split, ks=(1, 3)),
        "flat": rank_metrics(np.zeros((3, 5)), split, ks=(1, 3)),
    }
    results["flat"]["cold"]["ndcg@1"] = math.nan  # NaN cells: "n/a" in markdown, null in JSON
    paths = report(results, tmp_path / "eval", "Hand example")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "metrics.json",
        "metrics.md",
        "recall_at_k.png",
    ]
    assert paths["plot"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    saved = json.loads(paths["json"].read_text())
    assert saved["title"] == "Hand example"
    assert saved["models"]["oracle"]["warm"]["ndcg@3"] == pytest.approx(0.846713, abs=1e-6)
    assert saved["models"]["flat"]["cold"]["ndcg@1"] is None
    markdown = paths["markdown"].read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines()}
    assert "0.8467" in rows["oracle"] and "0.6667" in rows["oracle"]
    assert "n/a" in rows["flat"]
    assert "warm (n=2) recall@3" in markdown and "cold (n=1) ndcg@1" in markdown


def test_report_refuses_models_scored_on_different_users(tmp_path):
    split, scores = hand_split()
    fewer = EvalSplit(**{**split.__dict__, "warm": np.ones(3, bool)})
    results = {"a": rank_metrics(scores, split), "b": rank_metrics(scores, fewer)}
    with pytest.raises(ValueError, match="different users"):
        report(results, tmp_path, "mismatch")
    assert not list(tmp_path.iterdir())
