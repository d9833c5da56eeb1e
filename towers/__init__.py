"""The two-tower retrieval model: towers, training, evaluation against baselines.

Not built yet: issue 3. It trains on ``<data>/training/training_set.parquet``.
"""
