"""Embedding assets: a version's item vectors in LanceDB and its top-K candidates."""

from typing import Any

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    asset,
)

from orchestration.resources import (
    FeastResource,
    LanceDBResource,
    ModelRegistryResource,
    PipelineSettings,
)


def _target_version(reg: Any) -> str | None:
    """The version a run works on: the newest staged one (trained, gate passed, waiting for
    promotion), else the current one."""
    return reg.latest_staged() or reg.current()


def _version_inputs(pipeline: PipelineSettings, registry: ModelRegistryResource) -> Any:
    """(settings, registry, version, model, encoder, as_of) for the target version, or None
    when there is no version yet."""
    from recsys.features import default_as_of
    from towers.train import load_checkpoint

    settings = pipeline.settings()
    reg = registry.registry()
    version = _target_version(reg)
    if version is None:
        return None
    model, encoder, _ = load_checkpoint(reg.path(version) / "checkpoint.pt")
    as_of = settings.as_of or default_as_of(settings.paths.dataset)
    return settings, reg, version, model, encoder, as_of


@asset(group_name="embeddings", deps=["two_tower_model"], description="The catalogue through "
       "the item tower (features as of as_of) into the version's LanceDB table.")  # fmt: skip
def item_embeddings(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pandas as pd
    import pyarrow as pa

    from recsys.candidates import item_vectors
    from recsys.vectors import write_item_table

    inputs = _version_inputs(pipeline, registry)
    if inputs is None:
        return MaterializeResult(metadata={"status": "no model version to embed"})
    settings, _, version, model, encoder, as_of = inputs
    items = pd.read_parquet(settings.paths.dataset / "items.parquet")
    vectors = item_vectors(model, encoder, feast.store(), items.item_id.to_numpy(), as_of)
    attributes = pa.Table.from_pandas(items[["title", "genres", "release_year"]],
                                      preserve_index=False)  # fmt: skip
    info = write_item_table(
        lancedb.db_dir(), version, items.item_id.to_numpy(), vectors, attributes
    )
    return MaterializeResult(
        metadata={
            "version": version,
            "table": info.table,
            "rows": info.rows,
            "dimension": info.dim,
            "index_type": info.index_type,
            "build_seconds": round(info.build_seconds, 2),
        }  # fmt: skip
    )


@asset(group_name="embeddings", deps=["item_embeddings"], description="Top-K unseen items per "
       "user from the version's vectors; pushed online when the version is current.")  # fmt: skip
def user_candidates(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pandas as pd

    from recsys import candidates
    from recsys.vectors import ItemIndex

    inputs = _version_inputs(pipeline, registry)
    if inputs is None:
        return MaterializeResult(metadata={"status": "no model version"})
    settings, reg, version, model, encoder, as_of = inputs
    index = ItemIndex.open(lancedb.db_dir(), version, mode="matrix")
    item_ids, vectors = index.item_ids, index.vectors
    interactions = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    store = feast.store()
    table = candidates.user_candidates(
        model, encoder, store, interactions, item_ids, vectors, as_of, version,
        k=pipeline.candidates_k,
    )  # fmt: skip
    candidates.write_table(table, reg.path(version) / "candidates.parquet")
    pushed = 0
    if version == reg.current():
        candidates.write_table(table, settings.paths.candidates / "user_candidates.parquet")
        pushed = candidates.push_online(store, table)
    return MaterializeResult(
        metadata={
            "version": version,
            "users": table.num_rows,
            "k": pipeline.candidates_k,
            "pushed_online": pushed,
        }  # fmt: skip
    )
