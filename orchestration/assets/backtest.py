"""The rolling backtest as an asset of its own job (``backtest``), outside ``full_pipeline``:
the pipeline replayed as of several cuts (evaluation.backtest), its results as metadata (the
markdown tables, the plot, mean recall@20 per model and group over the windows).

It reads the configured dataset and writes only into its own output folder (by default
``<data>/backtest``: per-cut data folders, ``backtest.json``/``.md``/``.png``); it never
writes the pipeline's published data or model registry, so it takes no writer lock and
runs beside the pipeline's jobs.
"""

from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from orchestration.assets.common import png


class BacktestRunConfig(Config):
    """The backtest's run config (launchpad); empty fields: ``RECSYS_*`` / defaults."""

    dataset: str | None = None
    data_dir: str | None = None
    # Output folder; default <data_dir>/backtest.
    out: str | None = None
    # Cut quantiles of the event timestamps, comma-separated.
    cuts: str = "0.5,0.6,0.7,0.8,0.9"
    seed: int = 0
    # Bootstrap resamples of the users of each window.
    resamples: int = 1000
    synthetic_interactions: int | None = None
    synthetic_seed: int | None = None
    # Two-tower training, as orchestration.resources.PipelineSettings.
    max_epochs: int = 30
    temperatures: str = "0.05,1.0"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


# Key evaluation/backtest: its op is then ``evaluation__backtest``, so the job can be named
# ``backtest`` (Dagster refuses a job and an op of one name).
@asset(
    key_prefix="evaluation",
    group_name="evaluation",
    description="Rolling-origin backtest: features, training set, two-tower and baselines "
    "rebuilt as of each cut from the events before it; recall and NDCG per window and over "
    "windows with bootstrap intervals, for warm, cold and new-after-N users, and for the "
    "items first taken after each cut against genre baselines (with their reach@20).",
)
def backtest(context: AssetExecutionContext, config: BacktestRunConfig) -> MaterializeResult:
    from evaluation.backtest import BacktestConfig, canonical_dataset, oracle_truth, run_backtest
    from evaluation.backtest_report import markdown, recall_metadata, table
    from recsys.settings import settings_from

    settings = settings_from(data_dir=config.data_dir, dataset=config.dataset)
    out = Path(config.out) if config.out else settings.paths.data_dir / "backtest"
    cfg = BacktestConfig(quantiles=_floats(config.cuts), seed=config.seed,
                         resamples=config.resamples,
                         max_epochs=config.max_epochs,
                         temperatures=_floats(config.temperatures))  # fmt: skip
    folder = canonical_dataset(settings.dataset, out, config.synthetic_interactions,
                               config.synthetic_seed)  # fmt: skip
    truth = oracle_truth(settings.dataset, folder, config.synthetic_interactions,
                         config.synthetic_seed)  # fmt: skip
    summary = run_backtest(folder, out, cfg, truth, progress=context.log.info,
                           step=context.log.debug)  # fmt: skip
    context.log.info("\n" + table(summary))
    return MaterializeResult(
        metadata={
            "table": MetadataValue.md(markdown(summary)),
            "plot": png((out / "backtest.png").read_bytes(), "recall@20 per window"),
            "windows": len(summary["windows"]),
            "cuts": MetadataValue.json([w["cut"] for w in summary["windows"]]),
            "best_baseline_mean": MetadataValue.json(summary["best_baseline_mean"]),
            "new_items": MetadataValue.json([w["new_items"] for w in summary["windows"]]),
            "new_items_reach_mean": MetadataValue.json(summary["new_items_reach_mean"]),
            "wall_seconds": summary["wall_seconds"],
            "path": MetadataValue.path(str(out / "backtest.json")),
            **recall_metadata(summary),
        }
    )
