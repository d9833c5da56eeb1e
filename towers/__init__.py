"""The two-tower retrieval model: towers, training, evaluation against baselines.

It trains on ``<data>/training/training_set.parquet``.
"""

# Imported first for its process setting: torch's OpenMP threads wait passively (see there).
import recsys  # noqa: F401
