"""Validation of the canonical tables: a dataset folder in DuckDB, and frames in memory with
Great Expectations, every check's outcome, not just the first.

:func:`recsys.validation.folder.validate_dataset` (DuckDB, streaming) stops at the first problem
of a dataset folder. The other modules are its complement for frames already in memory (a
dataset table, a batch of new interactions or of user and item versions, a feature table):
they run a whole suite and report each check's outcome, so a Dagster blocking asset check can
show everything that is wrong at once.

Most checks are GX 1.x expectations run on one pandas batch in an ephemeral context. A few are
computed in pandas and reported in the same :class:`CheckOutcome` shape:

- dtypes: ``ExpectColumnValuesToBeInTypeList`` compares exact dtypes (it cannot say "any integer
  width" or "any tz-aware timestamp") and switches to a per-row check on object columns;
- membership in the known users / items: ``ExpectColumnValuesToBeInSet`` re-serialises its value
  set (a pydantic ``.dict()``) about a hundred times per run, about 20 s for a 100K-id set,
  where ``Series.isin`` takes milliseconds;
- the share of the most active user: GX has no expectation for it.

A check on a column that is missing or has an incompatible dtype is not run; it is reported as
failed with a detail starting ``skipped:`` (a blocking check must not pass on data it could not
look at). Integer columns may arrive as float64 holding whole numbers: that is what pandas makes
of an integer column with nulls, so it is accepted and the nulls are reported as nulls.

Modules: ``folder`` (a dataset folder in DuckDB, its normalised copy and summary), ``report``
(each check's outcome), ``checks`` (the check specifications), ``suite`` (running them: the GX
ones as one suite, the pandas ones directly) and ``tables`` (the checks of each table, and
reading a batch).
"""
