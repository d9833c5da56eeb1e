"""Benchmark: wall time of the whole Dagster graph, with a per-asset breakdown.

Materializes every asset (``full_pipeline``) in a fresh data folder, in this process, and
prints each step's wall time from Dagster's own step events, then the total. The MovieLens
download cache (``<repo>/data/raw``) is copied in when present, so the figure is the
pipeline's, not the network's.

    python benchmarks/bench_pipeline.py                       # MovieLens-100K
    python benchmarks/bench_pipeline.py --dataset synthetic --interactions 100000
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--work", type=Path, help="data folder (default: a temporary one)")
    args = parser.parse_args()

    from dagster import DagsterEventType, DagsterInstance, materialize

    from orchestration.assets import ASSETS
    from orchestration.resources import PipelineSettings, resources_for

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pipeline-")) / "data"
    if (ROOT / "data" / "raw").exists() and not (work / "raw").exists():
        shutil.copytree(ROOT / "data" / "raw", work / "raw")
    pipeline = PipelineSettings(data_dir=str(work), dataset=args.dataset,
                                synthetic_interactions=args.interactions)  # fmt: skip
    resources = resources_for(pipeline)
    instance = DagsterInstance.ephemeral()
    start = time.perf_counter()
    result = materialize(ASSETS, resources=resources, raise_on_error=False, instance=instance)
    total = time.perf_counter() - start
    began: dict[str, float] = {}
    steps: dict[str, float] = {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            began[event.step_key] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            steps[event.step_key] = entry.timestamp - began[event.step_key]
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    print(f"{'asset':>18} {'seconds':>8}")
    for name, seconds in steps.items():
        print(f"{name:>18} {seconds:>8.1f}")
    print(f"{'total (wall)':>18} {total:>8.1f}   success={result.success} failed_checks={failed}")
    out = ROOT / "benchmarks" / "results" / "pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": args.dataset, "steps": steps, "total": total,
                               "success": result.success, "failed_checks": failed}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
