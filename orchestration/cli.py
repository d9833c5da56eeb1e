"""Command line: ``recsys pipeline`` runs the whole Dagster graph, recorded in a persistent
Dagster instance, ``recsys catalogue-refresh`` its ``catalogue_refresh`` job; ``recsys build`` runs the foundation pipeline; ``recsys synth`` and
``recsys validate`` work on dataset folders; ``recsys backtest`` replays the pipeline as of
several cuts (evaluation.backtest). Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    from recsys.settings import settings_from

    return settings_from(
        data_dir=args.data_dir,
        dataset=args.dataset,
        as_of=args.as_of,
        synthetic_interactions=args.synthetic_interactions,
        synthetic_seed=args.seed,
    )


def _build(args: argparse.Namespace) -> int:
    from recsys.lock import DataFolderLocked
    from recsys.pipeline import build

    try:
        result = build(_settings(args), materialize_online=not args.no_materialize,
                       wait_seconds=args.wait)  # fmt: skip
    except DataFolderLocked as locked:
        print(f"recsys build: {locked}", file=sys.stderr)
        return 2
    summary = asdict(result.training_set)
    print(
        json.dumps(
            {"dataset": asdict(result.dataset), "training_set": summary, "seconds": result.seconds},
            indent=2,
            default=str,
        )
    )
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    """The whole Dagster graph (job ``full_pipeline``), in this process, recorded in the
    persistent Dagster instance of `dagster_home` (the UI started on it shows the run); one
    progress line per asset, then the summary."""
    from orchestration.assets import ASSETS
    from orchestration.definitions import full_pipeline

    names = [k.to_user_string() for a in ASSETS for k in a.keys]
    return _run_job(args, full_pipeline, names, "recsys pipeline")


def _catalogue_refresh(args: argparse.Namespace) -> int:
    """The ``catalogue_refresh`` job (new batches in; new or changed items embedded into a
    version derived from the current one, promoted), as ``recsys pipeline`` runs its job."""
    from orchestration.definitions import CATALOGUE_REFRESH_ASSETS, catalogue_refresh

    return _run_job(args, catalogue_refresh, list(CATALOGUE_REFRESH_ASSETS),
                    "recsys catalogue-refresh")  # fmt: skip


def _run_job(args: argparse.Namespace, job_def: Any, names: list[str], command: str) -> int:
    """Run ``job_def`` in this process under the data folder's writer lock, recorded in the
    persistent Dagster instance; one progress line per asset of ``names``, then the summary."""
    from dagster import AssetCheckSeverity, DagsterInstance, Definitions, colored_console_logger
    from rich.console import Console

    from orchestration.assets import ASSETS
    from orchestration.instance import POSTGRES_URL_VARIABLE, dagster_home, dagster_postgres_url
    from orchestration.progress import AssetProgress, progress_logger
    from orchestration.resources import PipelineSettings, resources_for
    from recsys.lock import DataFolderLocked, writer_lock
    from recsys.registry import ModelRegistry

    if not args.verbose:
        # LanceDB's Rust log (read once, when lancedb is first imported) warns on every new
        # table; errors only, unless the user set it.
        os.environ.setdefault("LANCEDB_LOG", "error")
    fast = {k: v for k in ("temperatures", "max_epochs")
            if (v := getattr(args, k, None)) is not None}  # fmt: skip
    if getattr(args, "no_baseline_gate", False):
        fast["gate_against_baseline"] = False
    pipeline = PipelineSettings(
        data_dir=str(args.data_dir) if args.data_dir else None, dataset=args.dataset,
        as_of=args.as_of, synthetic_interactions=args.synthetic_interactions,
        synthetic_seed=args.seed, force_retrain=getattr(args, "force_retrain", False), **fast,
    )  # fmt: skip
    settings = pipeline.settings()
    home = dagster_home(args.dagster_home, settings.profile)
    if settings.profile == "cluster":
        # Its dagster.yaml reads the Postgres URL from the environment: the one given there,
        # else the settings', with the driver Dagster needs either way.
        os.environ[POSTGRES_URL_VARIABLE] = dagster_postgres_url(
            os.environ.get(POSTGRES_URL_VARIABLE) or settings.postgres_url
        )
    # The real stdout, taken before the libraries' output is redirected below.
    console = Console(file=sys.stdout, highlight=False)
    progress = AssetProgress(console, names)
    loggers = {"progress": {}, **({"console": {"config": {"log_level": "DEBUG"}}}
                                  if args.verbose else {})}  # fmt: skip
    job = Definitions(
        assets=ASSETS, jobs=[job_def], resources=resources_for(pipeline),
        loggers={"progress": progress_logger(progress), "console": colored_console_logger},
    ).resolve_job_def(job_def.name)  # fmt: skip
    chatter = io.StringIO()
    with contextlib.ExitStack() as quiet:
        try:  # one writer at a time: held here for the whole run (the resource re-enters it)
            quiet.enter_context(writer_lock(settings.data_dir, owner=command,
                                            wait_seconds=args.wait))  # fmt: skip
        except DataFolderLocked as locked:
            print(f"{command}: {locked}", file=sys.stderr)
            return 2
        if not args.verbose:
            # What the libraries print themselves (Feast's materialization report, tqdm bars,
            # warnings) is kept, and shown only if the run fails.
            quiet.enter_context(contextlib.redirect_stdout(chatter))
            quiet.enter_context(contextlib.redirect_stderr(chatter))
        with DagsterInstance.from_config(str(home)) as instance:
            result = job.execute_in_process(
                run_config={"loggers": loggers},
                instance=instance,
                raise_on_error=False,
                tags={"launched_by": command},
            )
    progress.finish()
    if not result.success and chatter.getvalue():
        print(chatter.getvalue()[-20_000:], file=sys.stderr)
    # A failed check of WARN severity (the quality gate when a fallback is served) does not
    # block anything downstream; it is reported, and the run still succeeds.
    failed: list[str] = []
    warned: list[str] = []
    for e in result.get_asset_check_evaluations():
        if not e.passed:
            (warned if e.severity == AssetCheckSeverity.WARN else failed).append(
                f"{e.asset_key.to_user_string()}:{e.check_name}")  # fmt: skip
    # The quality gate's verdict: promoted or rejected, and against what, with the interval.
    gate = [str(e.metadata["verdict"].value) for e in result.get_asset_check_evaluations()
            if e.check_name == "quality_gate" and "verdict" in e.metadata]  # fmt: skip
    registry = ModelRegistry(settings.paths.models)
    current = registry.current()
    metrics = registry.metrics(current).get("models", {}) if current else {}
    print(json.dumps({
        "success": result.success, "failed_checks": failed, "warned_checks": warned,
        "current_version": current,
        "current_kind": registry.info(current).get("kind", "two-tower") if current else None,
        "quality_gate": gate[0] if gate else None,
        "test_recall@20": {m: {s: r[s]["recall@20"] for s in ("all", "warm", "cold")}
                           for m, r in metrics.items()},
        "dagster_run": result.run_id, "dagster_home": str(home), "profile": settings.profile,
    }, indent=2))  # fmt: skip
    return 0 if result.success and not failed else 1


def _backtest(args: argparse.Namespace) -> int:
    """The rolling backtest (evaluation.backtest): one line per cut (and per step with -v), then
    recall@20 per window and over windows with 95% intervals, per user group."""
    from evaluation.backtest import BacktestConfig, canonical_dataset, oracle_truth, run_backtest
    from evaluation.backtest_report import table
    from recsys.settings import settings_from

    settings = settings_from(data_dir=args.data_dir, dataset=args.dataset)
    out = (args.out or settings.paths.data_dir / "backtest").resolve()
    fields: dict[str, Any] = {"seed": args.seed, "max_epochs": args.max_epochs}
    if args.cuts:
        fields["quantiles"] = tuple(float(q) for q in args.cuts.split(",") if q.strip())
    if args.temperatures:
        fields["temperatures"] = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    cfg = BacktestConfig(**{k: v for k, v in fields.items() if v is not None})
    folder = canonical_dataset(settings.dataset, out, args.synthetic_interactions,
                               args.synthetic_seed)  # fmt: skip
    truth = oracle_truth(settings.dataset, folder, args.synthetic_interactions,
                         args.synthetic_seed)  # fmt: skip
    say = lambda line: print(line, flush=True)  # noqa: E731
    summary = run_backtest(folder, out, cfg, truth, progress=say,
                           step=say if args.verbose else None)  # fmt: skip
    print(table(summary))
    print(f"written: {out / 'backtest.json'}, backtest.md, backtest.png")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from recsys.datasets.synthetic import generate_synthetic

    args.out.mkdir(parents=True, exist_ok=True)
    print(generate_synthetic(args.out, args.interactions, seed=args.seed or 0))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recsys.schema import DatasetValidationError
    from recsys.validation.folder import summarize, validate_dataset

    try:
        casts = validate_dataset(args.folder)
    except DatasetValidationError as exc:
        print(f"invalid dataset: {exc}", file=sys.stderr)
        return 1
    # The casts ingest would apply, so a user sees them before ingesting.
    print(replace(summarize(args.folder), casts=[c.as_dict() for c in casts]))
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="movielens-100k (default), synthetic, or a folder path")
    p.add_argument("--data-dir", type=Path, help="data folder (default: ./data)")
    p.add_argument("--as-of", help="pipeline 'now' (ISO 8601); default: after the last event")
    p.add_argument("--synthetic-interactions", type=int, help="size of the synthetic dataset")
    p.add_argument("--seed", type=int, help="seed of the synthetic dataset")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another writer of the data folder to finish "
                   "(default: exit at once, naming it)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="ingest, features, feast apply, training set, materialize")
    _data_arguments(b)
    b.add_argument("--no-materialize", action="store_true", help="skip the online store")
    b.set_defaults(func=_build)
    r = sub.add_parser("pipeline", help="the whole Dagster graph: ingest to promotion")
    _data_arguments(r)
    r.add_argument("--force-retrain", action="store_true",
                   help="train a new version even if data and config did not change")  # fmt: skip
    r.add_argument("--temperatures", help="softmax temperatures tried (comma-separated)")
    r.add_argument("--max-epochs", type=int, help="most epochs a training run may take")
    r.add_argument("--no-baseline-gate", action="store_true",
                   help="the quality gate does not reject a two-tower significantly below the "
                   "best baseline (still reported); only the current version's comparison "
                   "decides")  # fmt: skip
    r.add_argument(
        "--dagster-home",
        type=Path,
        help="Dagster instance folder that records "
        "the run (default: $DAGSTER_HOME, else ./dagster_home of the project)",
    )
    r.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Dagster's event log and the libraries' INFO logs on the terminal",
    )
    r.set_defaults(func=_pipeline)
    c = sub.add_parser("catalogue-refresh", help="new or changed items served without "
                       "training: a version derived from the current one, promoted")  # fmt: skip
    _data_arguments(c)
    c.add_argument("--dagster-home", type=Path, help="Dagster instance folder that records the "
                   "run (default: $DAGSTER_HOME, else ./dagster_home of the project)")  # fmt: skip
    c.add_argument("-v", "--verbose", action="store_true",
                   help="Dagster's event log and the libraries' INFO logs on the terminal")  # fmt: skip
    c.set_defaults(func=_catalogue_refresh)
    t = sub.add_parser("backtest", help="rolling-origin backtest: the pipeline as of each cut")
    t.add_argument("--dataset", help="movielens-100k (default), synthetic, or a folder path")
    t.add_argument("--data-dir", type=Path, help="data folder whose backtest/ is the default "
                   "output (default: ./data; the pipeline's data there is not touched)")  # fmt: skip
    t.add_argument("--out", type=Path, help="output folder (default: <data-dir>/backtest)")
    t.add_argument("--cuts", help="cut quantiles of the event times, comma-separated "
                   "(default 0.5,0.6,0.7,0.8,0.9)")  # fmt: skip
    t.add_argument("--seed", type=int, help="training and bootstrap seed (default 0)")
    t.add_argument("--synthetic-interactions", type=int, help="size of the synthetic dataset")
    t.add_argument("--synthetic-seed", type=int, help="seed of the synthetic dataset")
    t.add_argument("--max-epochs", type=int, help="most epochs a training run may take")
    t.add_argument("--temperatures", help="softmax temperatures tried (comma-separated)")
    t.add_argument("-v", "--verbose", action="store_true", help="one line per step of a cut")
    t.set_defaults(func=_backtest)
    s = sub.add_parser("synth", help="write a synthetic canonical dataset folder")
    s.add_argument("--interactions", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_synth)
    v = sub.add_parser("validate", help="check a dataset folder against the canonical schema")
    v.add_argument("folder", type=Path)
    v.set_defaults(func=_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # `recsys pipeline` shows its own progress lines; the libraries' INFO chatter (Feast's
    # "Registry cache expired", ...) only with -v. `recsys backtest -v` adds step lines only.
    runs_job = args.func in (_pipeline, _catalogue_refresh)
    quiet = args.func is _backtest or (runs_job and not args.verbose)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
