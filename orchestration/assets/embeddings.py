"""Embedding assets: a new version's item vectors in LanceDB and its top-K candidates.

Both act only on the version this run built (recsys.registry: ``gated``, built by this
run), so a version's artifacts are written once, by its own run. A run that built no
version (data unchanged, or the ``feature_refresh`` job) writes no vectors;
``user_candidates`` then recomputes the current version's candidates with the new
features and publishes them to ``data/candidates/`` and the online store only. A fallback
version (``recsys.fallback``) goes the same way: each item's scores as its vectors (one
dimension, or one per profile segment) and the top-K unseen items by score as its
candidates (``evaluation.version_outputs``)."""

import time

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    asset,
)

from orchestration.assets.common import builder_run
from orchestration.resources import (
    FeastResource,
    LanceDBResource,
    ModelRegistryResource,
    PipelineSettings,
)


@asset(group_name="embeddings", deps=["two_tower_model", "catalogue_version"],
       description="The catalogue through the item tower (features as of as_of) into the "
       "LanceDB table of the version this run built (for a version derived by "
       "catalogue_version, only its new and changed items; the others' vectors copied from "
       "its parent's table); nothing when it built none.")  # fmt: skip
def item_embeddings(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pyarrow.parquet as pq

    from evaluation.catalogue import derived_vectors
    from evaluation.version_outputs import version_item_vectors, with_unknown_item_bias
    from recsys.index.table import write_item_table
    from recsys.registry import GATED
    from recsys.settings import run_as_of

    reg = registry.registry()
    version = reg.built_by(builder_run(context), GATED)
    if version is None:
        return MaterializeResult(metadata={"status": "no new version in this run: nothing "
                                           "written", "current": reg.current() or "none"})  # fmt: skip
    settings = pipeline.settings()
    # Read with Arrow, not through pandas: a nullable int column (release_year) stays int64
    # instead of turning into floats (1977.0) in the table and in every response.
    items = pq.read_table(settings.paths.dataset / "items.parquet",
                          columns=["item_id", "title", "genres", "release_year"])  # fmt: skip
    item_ids = items.column("item_id").to_numpy()
    # The users whose mean vector a new item's bias is levelled on.
    user_ids = pq.read_table(settings.paths.dataset / "users.parquet", columns=["user_id"])
    user_ids = user_ids.column("user_id").to_numpy()
    parent = reg.info(version).get("derived_from")
    start = time.perf_counter()
    store, as_of = feast.store(), run_as_of(settings)
    if parent is None:
        vectors = version_item_vectors(reg, version, store, item_ids, as_of)
        # Items the model never saw at the level its evaluation gave them.
        vectors = with_unknown_item_bias(reg, version, item_ids, vectors, store, user_ids, as_of)
        computed = len(item_ids)
    else:
        vectors, computed = derived_vectors(reg, version, lancedb.db_dir(), store, item_ids,
                                            user_ids, as_of)  # fmt: skip
    info = write_item_table(
        lancedb.db_dir(), version, item_ids, vectors, items.drop_columns(["item_id"])
    )
    return MaterializeResult(
        metadata={
            "version": version,
            "derived_from": parent or "none",
            "vectors_computed": computed,
            "vectors_copied": len(item_ids) - computed,
            "seconds": round(time.perf_counter() - start, 2),
            "table": info.table,
            "rows": info.rows,
            "dimension": info.dim,
            "index_type": info.index_type,
            "build_seconds": round(info.build_seconds, 2),
        }  # fmt: skip
    )


@asset(group_name="embeddings", deps=["item_embeddings"], description="Top-K unseen items per "
       "user: the new version's (written into it, which then is embedded), or else the "
       "current version's with today's features (online and data/candidates only).")  # fmt: skip
def user_candidates(
    context: AssetExecutionContext,
    pipeline: PipelineSettings,
    feast: FeastResource,
    lancedb: LanceDBResource,
    registry: ModelRegistryResource,
) -> MaterializeResult:
    import pandas as pd

    from evaluation.version_outputs import version_candidates
    from recsys.index.search import ItemIndex
    from recsys.registry import EMBEDDED, GATED
    from recsys.settings import run_as_of
    from towers import candidates

    reg = registry.registry()
    run_id = builder_run(context)
    built = reg.built_by(run_id, GATED)
    version = built or reg.current()
    if version is None:
        return MaterializeResult(metadata={"status": "no model version"})
    settings = pipeline.settings()
    as_of = run_as_of(settings)
    index = ItemIndex.open(lancedb.db_dir(), version, mode="matrix")
    interactions = pd.read_parquet(settings.paths.dataset / "interactions.parquet")
    store = feast.store()
    table = version_candidates(
        reg, version, store, interactions,
        lambda: pd.read_parquet(settings.paths.dataset / "users.parquet"),
        index.item_ids, index.vectors, as_of, pipeline.candidates_k,
    )  # fmt: skip
    pushed = 0
    if built is not None:  # promoted_model pushes them online once the version is current
        with reg.add_artifact(built, run_id, "candidates.parquet") as path:
            candidates.write_table(table, path)
        reg.transition(built, EMBEDDED, run_id, f"{index.rows} item vectors, "
                       f"{table.num_rows} users' candidates written")  # fmt: skip
    else:
        candidates.write_table(table, settings.paths.candidates / "user_candidates.parquet")
        pushed = candidates.push_online(store, table)
        if reg.store is not None:  # replicas reload the seen items with the new dataset
            reg.store.publish_served_folders(settings.paths)
    return MaterializeResult(
        metadata={
            "version": version,
            "new_version": built is not None,
            "users": table.num_rows,
            "k": pipeline.candidates_k,
            "pushed_online": pushed,
        }  # fmt: skip
    )
