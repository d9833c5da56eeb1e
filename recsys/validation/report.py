"""The outcome of a validation: one :class:`CheckOutcome` per check, gathered per table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result: what was checked, whether it passed, and a sentence saying why."""

    name: str  # e.g. "interactions.user_id not null"
    table: str
    column: str | None
    success: bool
    unexpected_count: int  # rows failing the check; 0 for table-level checks
    observed: Any  # a short JSON-able value (a count, a mean, example values) or None
    detail: str  # a human sentence; names the problem and up to 5 example offending values


@dataclass(frozen=True)
class ValidationReport:
    """Every check's outcome for one table."""

    table: str
    rows: int
    outcomes: list[CheckOutcome]

    @property
    def success(self) -> bool:
        return all(outcome.success for outcome in self.outcomes)

    @property
    def failed(self) -> list[CheckOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-able summary (e.g. for Dagster asset-check metadata)."""
        return {
            "table": self.table,
            "rows": self.rows,
            "success": self.success,
            "passed": len(self.outcomes) - len(self.failed),
            "failed": len(self.failed),
            "checks": {
                o.name: {"success": o.success, "unexpected_count": o.unexpected_count}
                for o in self.outcomes
            },
        }

    def markdown(self) -> str:
        """A markdown table of the checks, failed ones first (for a UI)."""
        status = "passed" if self.success else f"{len(self.failed)} failed"
        lines = [
            f"**{self.table}**: {self.rows} rows, {len(self.outcomes)} checks, {status}",
            "",
            "| check | result | unexpected rows | detail |",
            "|---|---|---|---|",
        ]
        for o in sorted(self.outcomes, key=lambda o: o.success):
            detail = o.detail.replace("|", "\\|").replace("\n", " ")
            mark = "pass" if o.success else "**FAIL**"
            lines.append(f"| {o.name} | {mark} | {o.unexpected_count} | {detail} |")
        return "\n".join(lines)
