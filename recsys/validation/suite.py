"""Running checks on a frame: the GX ones as one suite on one batch, the pandas ones directly,
and those whose columns are unusable skipped as failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from recsys.schema import EXAMPLES
from recsys.validation.checks import Check, dtype_problem, kind_of, plain, quiet_gx
from recsys.validation.report import CheckOutcome, ValidationReport

RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}


def run_gx(table: str, frame: pd.DataFrame, checks: list[Check]) -> dict[str, Any]:
    """Run the GX checks as one suite on one batch; their results by check name."""
    if not checks:
        return {}
    quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(table)
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe(table)
    )
    suite = gx.ExpectationSuite(name=table)
    for check in checks:
        assert check.expectation is not None
        expectation = check.expectation()
        expectation.meta = {"check": check.name}  # results come back in another order
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    results = batch.validate(suite, result_format=RESULT_FORMAT).results
    return {r.expectation_config.meta["check"]: r for r in results if r.expectation_config}


def _gx_outcome(check: Check, table: str, result: Any, rows: int) -> CheckOutcome:
    def outcome(success: bool, count: int, observed: Any, detail: str) -> CheckOutcome:
        return CheckOutcome(check.name, table, check.column, success, count, observed, detail)

    if result is None:
        return outcome(False, 0, None, "Great Expectations returned no result for this check")
    info = result.exception_info or {}
    # One expectation reports {"raised_exception": ...}; a metric failure, {metric id: {...}}.
    errors = [info] if "raised_exception" in info else list(info.values())
    messages = [str(e.get("exception_message")) for e in errors if e.get("raised_exception")]
    if messages:
        return outcome(False, 0, None, f"error while checking: {'; '.join(sorted(set(messages)))}")
    body = result.result or {}
    if result.success:
        observed = plain(body.get("observed_value"))
        detail = f"passed ({rows} rows)" if observed is None else f"passed (observed {observed})"
        return outcome(True, 0, observed, detail)
    assert check.explain is not None
    count, observed, detail = check.explain(body, rows)
    return outcome(False, count, observed, detail)


def _usability(frame: pd.DataFrame, schema: pa.Schema | None) -> dict[str, str]:
    """Why each unusable column (missing, or of an incompatible dtype) is unusable."""
    if schema is None:
        return {}
    reasons = {}
    for field in schema:
        if field.name not in frame.columns:
            reasons[field.name] = f"column '{field.name}' is missing"
        elif (problem := dtype_problem(frame[field.name], kind_of(field.type))) is not None:
            reasons[field.name] = f"column '{field.name}' {problem}"
    return reasons


def run(
    table: str,
    frame: pd.DataFrame,
    checks: list[Check],
    schema: pa.Schema | None,
    extra_missing: Sequence[str] = (),
) -> ValidationReport:
    """Run ``checks`` on ``frame``: GX ones as one suite, pandas ones directly, skipping (as
    failed) those whose columns are unusable."""
    unusable = _usability(frame, schema)
    unusable.update({c: f"column '{c}' is missing" for c in extra_missing if c not in frame})
    rows = len(frame)
    decided: dict[str, CheckOutcome] = {}
    to_gx = []
    for check in checks:
        reasons = [unusable[c] for c in check.needs if c in unusable]
        why_not = None if reasons or check.not_applicable is None else check.not_applicable(frame)
        if reasons:
            decided[check.name] = CheckOutcome(
                check.name, table, check.column, False, 0, None, f"skipped: {'; '.join(reasons)}"
            )
        elif why_not is not None:
            decided[check.name] = CheckOutcome(
                check.name, table, check.column, True, 0, None, f"not applicable: {why_not}"
            )
        elif check.compute is not None:
            success, count, observed, detail = check.compute(frame)
            decided[check.name] = CheckOutcome(
                check.name, table, check.column, success, count, plain(observed), detail
            )
        else:
            to_gx.append(check)
    results = run_gx(table, frame, to_gx)
    for check in to_gx:
        decided[check.name] = _gx_outcome(check, table, results.get(check.name), rows)
    return ValidationReport(table, rows, [decided[check.name] for check in checks])
