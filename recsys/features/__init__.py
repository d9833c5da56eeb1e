"""Features: each declared once (`catalog`), and everything derived from the declarations.

``spec`` holds the dataclasses of a declaration, ``catalog`` the project's features, ``build``
the DuckDB SQL that computes the offline tables.
"""

from recsys.features.build import (
    AGE_BUCKETS,
    EPOCH,
    ONE_US,
    POPULARITY_WINDOWS_DAYS,
    VIEWS,
    FeatureManifest,
    build_features,
    compute_features,
    default_as_of,
    item_content_sql,
    item_popularity_sql,
    user_activity_sql,
    user_profile_sql,
)

__all__ = [
    "AGE_BUCKETS",
    "EPOCH",
    "ONE_US",
    "POPULARITY_WINDOWS_DAYS",
    "VIEWS",
    "FeatureManifest",
    "build_features",
    "compute_features",
    "default_as_of",
    "item_content_sql",
    "item_popularity_sql",
    "user_activity_sql",
    "user_profile_sql",
]
