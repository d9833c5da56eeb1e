"""Core of the recommender pipeline: datasets, features, point-in-time training sets.

Plain functions that the Dagster assets (`orchestration/`), the model (`towers/`) and the
server (`serving/`) glue together; each is callable and testable without Dagster.
"""
