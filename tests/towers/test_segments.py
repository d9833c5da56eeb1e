"""Segment popularity on tiny profiles: a cold user gets their segment's favourite, thin
segments and missing profiles get global popularity, the segmentation is chosen on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.towers.test_baselines import END, START, frame
from towers.evaluate import build_eval_split, rank_metrics
from towers.segments import (
    SegmentPopularity,
    best_segmentation,
    profile_feature,
    segment_labels,
    segmentation_search,
)


def profiles(ids, gender, occupation, age=30) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"user_id": np.asarray(ids, np.int64), "age": np.full(n, age),
                         "gender": gender, "occupation": occupation, "zip_code": "00000"})  # fmt: skip


def test_labels_use_the_feature_age_buckets_and_missing_fields_give_none():
    ages = pd.Series([17, 18, 24, 25, 49, 50, 55, 56, 70, np.nan])
    assert profile_feature(pd.DataFrame({"age": ages}), "age_bucket").tolist() == [
        "<18", "18-24", "18-24", "25-34", "45-49", "50-55", "50-55", "56+", "56+", None,
    ]  # fmt: skip
    users = pd.DataFrame({"user_id": [1, 2, 3], "age": [20, np.nan, 40],
                          "gender": ["F", "M", None]})  # fmt: skip
    labels = segment_labels(users, ("age_bucket", "gender"))
    assert labels.to_dict() == {1: "18-24 | F", 2: None, 3: None}
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['occupation'\]"):
        segment_labels(users, ("occupation",))
    with pytest.raises(ValueError, match="duplicate user_id"):
        segment_labels(pd.concat([users, users]), ("gender",))


def test_cold_user_gets_their_segments_favourite():
    # 30 nurses love item 0, 30 artists love item 1; item 2 is the most popular overall
    # (40 users without a profile had it). 2 pilots love item 3: too few to count on.
    rows = [(u, 0, 1) for u in range(30)] + [(u, 1, 1) for u in range(30, 60)]
    rows += [(u, 2, 2) for u in range(300, 340)] + [(u, 3, 3) for u in (60, 61)]
    train = frame(rows)
    users = pd.concat([
        profiles(range(30), "F", "nurse"), profiles(range(30, 60), "M", "artist"),
        profiles([60, 61], "M", "pilot"),
        profiles([100, 101, 102], "F", ["nurse", "artist", "pilot"]),  # cold users
    ])  # fmt: skip
    # 100 and 101 want their segment's favourite, 102 (pilot) and 103 (no profile) item 0.
    window = frame([(100, 0, 12), (101, 1, 12), (102, 0, 12), (103, 0, 12)])
    split = build_eval_split(pd.concat([train, window]), np.arange(5), START, END)
    model = SegmentPopularity(("occupation",), min_users=20).fit(train, users, np.arange(5))
    top = model.score_fn(split)(np.arange(4)).argmax(axis=1)
    assert top.tolist() == [0, 1, 2, 2]  # thin segment and no profile: global popularity
    assert set(model.segments_) == {"nurse", "artist"}
    # Within a segment, ties go to the globally more popular item (3 over 4).
    scores = model.score_fn(split)(np.arange(1))[0]
    assert scores[3] > scores[4] and scores[0] > scores[2] > scores[3]
    metrics = rank_metrics(model.score_fn(split), split, ks=(1,))
    assert metrics["cold"]["recall@1"] == 0.5  # 100 and 101 hit, 102 and 103 miss
    with pytest.raises(ValueError, match="leak"):
        SegmentPopularity(("gender",)).fit(
            pd.concat([train, window]), users, np.arange(5)
        ).score_fn(split)


def test_segmentation_is_chosen_on_validation_cold_users():
    rng = np.random.default_rng(0)
    # Occupation decides taste (occupation k loves items 2k, 2k+1), gender is noise.
    jobs = [f"job{k}" for k in range(4)]
    ids = np.arange(200)
    users = profiles(ids, rng.choice(["F", "M"], 200), [jobs[u % 4] for u in ids])
    train = frame([(u, 2 * (u % 4) + j, 1) for u in range(160) for j in (0, 1)])
    window = frame([(u, 2 * (u % 4), 12) for u in range(160, 200)])  # 40 cold users
    val = build_eval_split(pd.concat([train, window]), np.arange(8), START, END)
    candidates = {"gender": ("gender",), "occupation": ("occupation",)}
    tried = segmentation_search(train, users, val, np.arange(8), candidates, k=2)
    assert tried["occupation"]["cold"] == 1.0 > tried["gender"]["cold"]
    assert best_segmentation(tried) == "occupation"
    # A candidate the profile cannot serve is skipped; none at all is an error naming columns.
    partial = segmentation_search(
        train, users, val, np.arange(8), {**candidates, "x": ("zz",)}, k=2
    )
    assert set(partial) == {"gender", "occupation"}
    with pytest.raises(ValueError, match="no segmentation fits"):
        segmentation_search(train, users, val, np.arange(8), {"x": ("zz",)}, k=2)
    # With no cold user in validation, the choice is made on all users.
    nan = float("nan")
    assert (
        best_segmentation({"a": {"cold": nan, "all": 0.1}, "b": {"cold": nan, "all": 0.3}}) == "b"
    )
