"""Dagster orchestration of the pipeline (assets, checks, schedules, sensors).

Not built yet: issue 4. The steps it will run are the plain functions of ``recsys``
(``recsys.pipeline.build`` runs them in sequence today).
"""
