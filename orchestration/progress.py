"""Progress of a Dagster run on a terminal: one line per asset as its step ends.

`AssetProgress` is a logging handler fed by a Dagster logger (`progress_logger`): Dagster
hands every event of the run to the loggers named in the run config, with the
`DagsterEvent` on the record. From those events it prints, for each asset, its name, the
seconds its step took and its key figure (picked from the materialization's metadata by
`KEY_FIGURES`), and the checks that failed, in red. Assets that never ran (downstream of a
failure) are listed by `finish`.

    progress = AssetProgress(Console(), assets=["dataset", ...])
    job.execute_in_process(run_config={"loggers": {"progress": {}}}, ...)  # logger_defs:
    progress.finish()                                                   # progress_logger()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetCheckSeverity, DagsterEventType, LoggerDefinition
from rich.console import Console
from rich.markup import escape

# The metadata entries that say, in a few words, what each asset produced; a "status" entry
# (e.g. "nothing new to promote") is shown too.
KEY_FIGURES: Mapping[str, tuple[str, ...]] = {
    "incoming_batch": ("status", "rows", "new_events", "duplicate_events"),
    "dataset": ("interactions", "new_events", "users", "items"),
    "features": ("rows",),
    "feast_registry": ("feature_views",),
    "training_set": ("rows",),
    "two_tower_model": ("version", "reused", "best_epoch", "gate_outcome"),
    "catalogue_version": ("version", "new_items", "changed_items"),
    "item_embeddings": ("rows", "index_type"),
    "user_candidates": ("users", "pushed_online"),
    "online_features": ("entities_written", "entities_unchanged"),
    "promoted_model": ("current", "kind", "test_recall@20"),
}


def _plain(value: Any) -> Any:
    """The Python value of a Dagster metadata value (`IntMetadataValue(3)` -> 3)."""
    return getattr(value, "value", value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return " ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return str(len(value)) if len(value) > 3 else ", ".join(_short(v) for v in value)
    return str(value)


def key_figure(asset: str, metadata: Mapping[str, Any]) -> str:
    """The asset's key figure from its materialization metadata, e.g. ``rows 20,000``."""
    keys = [k for k in KEY_FIGURES.get(asset, ()) if k in metadata]
    if "status" in metadata and "status" not in keys:
        keys.append("status")
    return ", ".join(f"{k} {_short(_plain(metadata[k]))}" for k in keys)


class AssetProgress(logging.Handler):
    """Prints one line per asset of a run as its step succeeds or fails (see module doc)."""

    def __init__(self, console: Console, assets: Iterable[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self.console = console
        self.assets = list(assets)
        self.started: dict[str, float] = {}
        self.metadata: dict[str, Mapping[str, Any]] = {}
        self.failed_checks: dict[str, list[str]] = {}
        self.warned_checks: dict[str, list[str]] = {}  # failed with WARN: nothing blocked
        self.checks: dict[str, int] = {}
        self.done: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is None or event.step_key is None:
            return
        step, kind = event.step_key, event.event_type
        if kind == DagsterEventType.STEP_START:
            self.started[step] = time.monotonic()
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            self.metadata[step] = event.materialization.metadata
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.asset_check_evaluation_data
            self.checks[step] = self.checks.get(step, 0) + 1
            if not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN:
                self.warned_checks.setdefault(step, []).append(evaluation.check_name)
            elif not evaluation.passed:
                self.failed_checks.setdefault(step, []).append(evaluation.check_name)
        elif kind == DagsterEventType.STEP_SUCCESS:
            self._line(step, ok=True)
        elif kind == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            self._line(step, ok=False, error=error.message.strip() if error else "failed")

    def _line(self, step: str, ok: bool, error: str = "") -> None:
        seconds = time.monotonic() - self.started.get(step, time.monotonic())
        figure = key_figure(step, self.metadata.get(step, {}))
        failed = self.failed_checks.get(step, [])
        checks = self.checks.get(step, 0)
        mark = "[green]✓[/]" if ok else "[bold red]✗[/]"
        line = f"{mark} [bold]{step:<16}[/] {seconds:6.1f} s  {escape(figure)}"
        warned = self.warned_checks.get(step, [])
        if checks:
            noun = "check" if checks == 1 else "checks"
            line += f"  [red]{len(failed)}/{checks} {noun} failed: {', '.join(failed)}[/]" if failed \
                else f"  [dim]{checks - len(warned)} of {checks} {noun} passed[/]" if warned \
                else f"  [dim]{checks} {noun} passed[/]"  # fmt: skip
        if warned:
            line += f"  [yellow]warning: {', '.join(warned)}[/]"
        if error and not failed:
            line += f"  [red]{escape(error.splitlines()[0][:160])}[/]"
        self.console.print(line, highlight=False, soft_wrap=True)
        self.done.append(step)

    def finish(self) -> list[str]:
        """Prints a line for each asset whose step never ran; returns their names."""
        missing = [a for a in self.assets if a not in self.done]
        for asset in missing:
            self.console.print(f"[yellow]–[/] [bold]{asset:<16}[/]          not run "
                               "(an upstream step or blocking check failed)", highlight=False)  # fmt: skip
        return missing


def progress_logger(progress: AssetProgress) -> LoggerDefinition:
    """A Dagster logger that hands the run's events to `progress` (name it in the run config's
    ``loggers`` to switch it on)."""

    def init(_context: Any) -> logging.Logger:
        # A logger outside logging's registry: only this run's events reach the handler.
        log = logging.Logger("recsys.progress", level=logging.DEBUG)
        log.addHandler(progress)
        return log

    return LoggerDefinition(init, description="One line per asset on the terminal.")
