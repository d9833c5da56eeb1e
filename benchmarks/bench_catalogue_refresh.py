"""Benchmark of the catalogue refresh: from new items dropped in to a running server serving
the version derived for them (``catalogue_refresh`` job, ``evaluation.catalogue``).

    python benchmarks/bench_catalogue_refresh.py --dataset /work/ml100k --data-dir /tmp/cb/ml
    python benchmarks/bench_catalogue_refresh.py --synthetic-items 100000 \\
        --interactions 400000 --data-dir /tmp/cb/100k

Setup (not timed): the whole graph once on the dataset (a fast two-tower: one temperature,
``--max-epochs``, the gate's baseline rule off, as the serving tests do), then
``python -m serving`` on the data folder (``--reload-interval 0.2``). Each round then drops
``--new-items`` new items in ``incoming/items/`` (genres and release year of random existing
items, titled ``New item <id>``) and times, in this process:

* ``job``: the ``catalogue_refresh`` job, in process (imports warm): the batch staged and
  validated, the dataset appended, features, Feast, the online store, the derived version,
  its item table (only the new items through the item tower), its candidates, the promotion;
* ``served``: from the same start until the server's ``/readyz`` names the new version
  (its poll of current.json, the load and warm-up of the version, the swap).

Figures: README, "A living catalogue".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serving.conftest import start_server, stop_server  # noqa: E402


def settings_for(data: Path, dataset: str, max_epochs: int) -> Any:
    from orchestration.resources import PipelineSettings

    return PipelineSettings(data_dir=str(data), dataset=dataset, temperatures="0.05",
                            max_epochs=max_epochs, gate_against_baseline=False)  # fmt: skip


def run_job(settings: Any, job: str) -> Any:
    from dagster import Definitions

    from orchestration.assets import ASSETS
    from orchestration.definitions import catalogue_refresh, full_pipeline
    from orchestration.resources import resources_for

    defs = Definitions(assets=ASSETS, jobs=[full_pipeline, catalogue_refresh],
                       resources=resources_for(settings))  # fmt: skip
    result = defs.resolve_job_def(job).execute_in_process(raise_on_error=False)
    if not result.success:
        raise SystemExit(f"{job} failed")
    return result


def step_seconds(result: Any) -> dict[str, float]:
    """Each step's wall time (Dagster's STEP_SUCCESS events)."""
    return {e.step_key: e.event_specific_data.duration_ms / 1000
            for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}  # fmt: skip


def drop_new_items(data: Path, n: int, seed: int) -> list[int]:
    """``n`` new items dropped in ``data/incoming/items/`` as a sender would (genres and
    release year of random existing items), true from the dataset's last event (so that
    as_of, and every other feature, stays where it was); returns their ids."""
    items = pd.read_parquet(data / "dataset" / "items.parquet")
    last = pd.read_parquet(data / "dataset" / "interactions.parquet",
                           columns=["event_timestamp"]).event_timestamp.max()  # fmt: skip
    like = items.sample(n, random_state=seed, replace=n > len(items))  # more than there are
    ids = list(range(int(items.item_id.max()) + 1, int(items.item_id.max()) + 1 + n))
    new = like.assign(item_id=ids, title=[f"New item {i}" for i in ids], valid_from=last)
    (data / "incoming" / "items").mkdir(parents=True, exist_ok=True)
    new.to_parquet(data / "incoming" / "items" / f"new-{seed}.parquet")
    return ids


def new_item_reach(candidates: Path, ids: list[int]) -> str:
    """How far the new items (no events yet) reach: users whose stored top-100 holds one,
    and the best rank one gets."""
    table = pd.read_parquet(candidates)
    ranks = table.candidate_item_ids.map(
        lambda row: min([r for r, i in enumerate(row) if i in set(ids)], default=-1)
    )
    held = ranks[ranks >= 0]
    best = int(held.min()) + 1 if len(held) else None
    return f"{len(held)} of {len(table)} users' top-100 hold a new item (best rank {best})"


def served_version(base: tuple[str, int]) -> str | None:
    with urllib.request.urlopen(f"http://{base[0]}:{base[1]}/readyz", timeout=10) as r:
        return json.loads(r.read()).get("model_version")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--dataset", help="a canonical dataset folder (e.g. /work/ml100k)")
    p.add_argument("--synthetic-items", type=int, help="instead: a synthetic catalogue")
    p.add_argument("--interactions", type=int, default=400_000, help="of the synthetic one")
    p.add_argument("--new-items", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=3)
    args = p.parse_args()
    from recsys.registry import ModelRegistry

    data = args.data_dir.resolve()
    dataset = args.dataset
    if args.synthetic_items:
        from recsys.datasets.synthetic import generate_synthetic

        dataset = str(data.parent / "synthetic-source")
        if not Path(dataset).exists():
            started = time.perf_counter()
            generate_synthetic(Path(dataset), args.interactions, n_items=args.synthetic_items,
                               progress=False)  # fmt: skip
            print(f"setup: synthetic catalogue of {args.synthetic_items} items, "
                  f"{args.interactions} events: {time.perf_counter() - started:.1f} s")  # fmt: skip
    if dataset is None:
        raise SystemExit("give --dataset or --synthetic-items")
    reg = ModelRegistry(data / "models")
    if reg.current() is None:
        started = time.perf_counter()
        run_job(settings_for(data, dataset, args.max_epochs), "full_pipeline")
        print(f"setup: full_pipeline {time.perf_counter() - started:.1f} s, version "
              f"{reg.current()}")  # fmt: skip
    server = start_server(data, data.parent / "server.log", timeout=600)
    rows: list[dict[str, float]] = []
    try:
        for r in range(args.rounds):
            ids = drop_new_items(data, args.new_items, seed=r)
            start = time.perf_counter()
            result = run_job(settings_for(data, dataset, args.max_epochs), "catalogue_refresh")
            job = time.perf_counter() - start
            version = reg.current()
            while served_version(server.base) != version:
                time.sleep(0.02)
            served = time.perf_counter() - start
            info = reg.info(str(version))
            assert info["catalogue"]["new_item_ids"] == ids, info["catalogue"]
            steps = step_seconds(result)
            rows.append({"job": job, "served": served, **steps})
            reach = new_item_reach(reg.path(str(version)) / "candidates.parquet", ids)
            print(f"round {r + 1}: {len(ids)} new items of {info['catalogue']['items']}; job "
                  f"{job:.1f} s, served {served:.1f} s; {reach}; steps "
                  + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()), flush=True)  # fmt: skip
    finally:
        stop_server(server)
    for key in ("job", "served", "catalogue_version", "item_embeddings", "user_candidates"):
        values = [row[key] for row in rows if key in row]
        if values:
            print(f"{key:<18} mean {statistics.mean(values):6.1f} s  min {min(values):6.1f}  "
                  f"max {max(values):6.1f}  ({len(values)} rounds)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
