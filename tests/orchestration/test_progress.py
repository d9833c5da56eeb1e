"""The progress lines of `recsys pipeline` (orchestration.progress), on a real Dagster run of
a three-asset graph: one line per asset as its step ends, its key figure, failed blocking
checks named, and the assets a failure kept from running listed as not run."""

import io

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetSelection,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)
from rich.console import Console

from orchestration.progress import AssetProgress, key_figure, progress_logger


@asset
def dataset() -> MaterializeResult:
    return MaterializeResult(metadata={"interactions": 20000, "users": 500, "items": 200})


@asset(deps=[dataset], check_specs=[AssetCheckSpec("rows_unique", asset="features", blocking=True),
                                    AssetCheckSpec("not_empty", asset="features", blocking=True)])  # fmt: skip
def features() -> MaterializeResult:
    return MaterializeResult(
        metadata={"rows": {"user_profile": 500}, "seconds": 1.5},
        check_results=[
            AssetCheckResult(check_name="rows_unique", passed=False),
            AssetCheckResult(check_name="not_empty", passed=True),
        ],  # fmt: skip
    )


@asset(deps=[features])
def training_set() -> None:
    pass


def run(console: Console) -> tuple[bool, AssetProgress]:
    progress = AssetProgress(console, ["dataset", "features", "training_set"])
    job = Definitions(
        assets=[dataset, features, training_set],
        jobs=[define_asset_job("all", AssetSelection.all())],
        loggers={"progress": progress_logger(progress)},
    ).resolve_job_def("all")
    result = job.execute_in_process(run_config={"loggers": {"progress": {}}}, raise_on_error=False)
    return result.success, progress


def test_one_line_per_asset_with_key_figure_failed_checks_and_not_run():
    out = io.StringIO()
    success, progress = run(Console(file=out, width=300, color_system=None))
    assert success is False
    assert progress.finish() == ["training_set"]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert (
        lines[0].startswith("✓ dataset") and "interactions 20,000, users 500, items 200" in lines[0]
    )
    assert lines[1].startswith("✗ features") and "rows user_profile 500" in lines[1]
    assert "1/2 checks failed: rows_unique" in lines[1]
    assert lines[2].startswith("– training_set") and "not run" in lines[2]


def test_failed_checks_are_red_on_a_terminal():
    out = io.StringIO()
    run(Console(file=out, width=300, force_terminal=True, color_system="standard"))
    features_line = next(line for line in out.getvalue().splitlines() if "features" in line)
    assert "\x1b[31m1/2 checks failed" in features_line  # ANSI red


def test_key_figure_picks_the_listed_entries_and_status():
    assert key_figure("promoted_model", {"current": "v1", "status": "nothing new to promote",
                                         "previous": "v0"}) == \
        "current v1, status nothing new to promote"  # fmt: skip
    assert key_figure("training_set", {"rows": {"train": 16000, "val": 2000}, "seconds": 3}) == \
        "rows train 16,000 val 2,000"  # fmt: skip
    assert key_figure("unknown_asset", {"rows": 3}) == ""
