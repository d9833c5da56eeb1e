"""THE feature declarations of the project: every view, feature and service, once.

Adding a feature is one entry here: the feature SQL, the Feast objects, the cold-start row
and the towers' inputs are derived from this catalogue, and its op's parity test (SQL against
Python) is generated (`tests/features/test_ops.py`).
"""

from __future__ import annotations

from datetime import timedelta

from recsys.features.ops import (
    Bucket,
    Column,
    Count,
    GenreShares,
    MeanRating,
    Prefix,
    Recent,
    TrailingCount,
)
from recsys.features.spec import Catalog, Encoding, Feature, Service, View, ViewKind

# Age buckets of MovieLens-1M: coarse enough to generalise, a common convention.
AGE_BUCKETS = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
)
# Trailing windows of item popularity: item_count_<d>d for each.
POPULARITY_WINDOWS_DAYS = (7, 30)
NEVER = timedelta(0)
# A user or item silent for a year is treated as unknown: its last values no longer
# describe it.
YEAR = timedelta(days=365)

USER_PROFILE = View(
    "user_profile",
    "user",
    ViewKind.STATIC,
    NEVER,
    (
        Feature("age_bucket", "string", Bucket("age", AGE_BUCKETS, "56+"), Encoding.CATEGORICAL),
        Feature("gender", "string", Column("gender"), Encoding.CATEGORICAL),
        Feature("occupation", "string", Column("occupation"), Encoding.CATEGORICAL),
        # The zip code's first three characters: the towers' input until the region below
        # replaced it; kept for the versions trained on it (Feature.retired).
        Feature(
            "zip_prefix", "string", Prefix("zip_code", 3), Encoding.CATEGORICAL, retired=True
        ),  # fmt: skip
        # The zip code's first character: its region (US: one of 10 national areas; Canada: a
        # province letter). Three characters split MovieLens-100K's 943 users into 382 groups
        # of two or three, too small to learn a vector each, and the model fitted noise: with
        # both inputs, synthetic validation lost what the region alone gained (README, "The
        # zip region").
        Feature("zip_region", "string", Prefix("zip_code", 1), Encoding.CATEGORICAL),
    ),
    "User attributes, one row per version, stamped at its valid_from.",
)

USER_ACTIVITY = View(
    "user_activity",
    "user",
    ViewKind.USER_EVENTS,
    YEAR,
    (
        Feature("user_interaction_count", "int64", Count(), Encoding.LOG_NUMERIC),
        Feature("user_mean_rating", "float64", MeanRating(), Encoding.NUMERIC),
        Feature(
            "user_genre_affinity",
            "float32[]",
            GenreShares(),
            Encoding.GENRE_SHARES,
            "Share of the user's interactions per genre, in the manifest's genre order.",
        ),
        Feature(
            "recent_item_ids",
            "int64[]",
            Recent("item_id"),
            Encoding.HISTORY_ITEMS,
            "Most recent first; the user tower's history and the already-seen items.",
        ),
        Feature(
            "recent_item_ratings",
            "float64[]",
            Recent("rating"),
            Encoding.HISTORY_RATINGS,
            "Aligned with recent_item_ids; NaN when unrated (Feast's online store would "
            "turn a null element into 0.0).",
        ),
        Feature(
            "recent_item_timestamps",
            "int64[]",
            Recent("time"),
            Encoding.HISTORY_TIMES,
            "Aligned with recent_item_ids: the event time in whole epoch seconds.",
        ),
    ),
    "The user's interactions so far, one row per distinct event time.",
)

ITEM_CONTENT = View(
    "item_content",
    "item",
    ViewKind.STATIC,
    NEVER,
    (
        Feature("item_genres", "string[]", Column("genres"), Encoding.GENRE_BAG),
        Feature("item_release_year", "int64", Column("release_year"), Encoding.NUMERIC),
    ),
    "Item attributes, one row per version, stamped at its valid_from.",
)

ITEM_POPULARITY = View(
    "item_popularity",
    "item",
    ViewKind.ITEM_EVENTS,
    YEAR,
    (
        Feature("item_interaction_count", "int64", Count(), Encoding.LOG_NUMERIC),
        Feature("item_mean_rating", "float64", MeanRating(), Encoding.NUMERIC),
        *(
            Feature(f"item_count_{d}d", "int64", TrailingCount(d), Encoding.LOG_NUMERIC)
            for d in POPULARITY_WINDOWS_DAYS
        ),
    ),
    "Running totals and trailing-window counts, exact at every change point.",
)

CATALOG = Catalog(
    views=(USER_PROFILE, USER_ACTIVITY, ITEM_CONTENT, ITEM_POPULARITY),
    services=(
        Service(
            "two_tower_training_v1",
            ("user_profile", "user_activity", "item_content", "item_popularity"),
            "Point-in-time features of both towers for training rows (user, item, time).",
        ),
        Service(
            "user_tower_serving_v1",
            ("user_profile", "user_activity"),
            "Online features the user tower needs at request time.",
        ),
        Service(
            "item_tower_v1",
            ("item_content", "item_popularity"),
            "Item features the item tower needs to embed the catalogue as of a time.",
        ),
    ),
)
