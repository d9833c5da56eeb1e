"""What a gated version serves from, whichever kind it is: its item vectors and its users'
candidates (a two-tower through its towers, a fallback through its ranking), and the reason
recorded when it is promoted. The ``item_embeddings``, ``user_candidates`` and
``promoted_model`` assets call these; tests call them without Dagster."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys import fallback


def _model(reg: Any, version: str) -> tuple[Any, Any]:
    """(model, encoder) of a two-tower ``version``, from its served checkpoint."""
    from towers.checkpoint import load_checkpoint

    model, encoder, _ = load_checkpoint(reg.path(version) / "checkpoint.pt")
    return model, encoder


def version_item_vectors(reg: Any, version: str, store: Any, item_ids: np.ndarray,
                         as_of: Any) -> np.ndarray:  # fmt: skip
    """(N, D) float32 LanceDB vectors of ``item_ids`` for ``version``: a fallback's scores
    (D = 1 + segments), or the item tower's index vectors with Feast's features as of
    ``as_of`` (D = d + 1)."""
    if fallback.is_fallback(reg.info(version)):
        return fallback.item_vectors(reg.path(version), item_ids)
    from towers.candidates import item_vectors

    model, encoder = _model(reg, version)
    return item_vectors(model, encoder, store, item_ids, as_of)


MEAN_QUERY_USERS = 10_000  # at most this many users, evenly spaced by id, in the mean query


def mean_query(model: Any, encoder: Any, store: Any, user_ids: np.ndarray, as_of: Any) -> Any:
    """(d,) the mean user vector of ``user_ids`` (at most ``MEAN_QUERY_USERS`` of them,
    evenly spaced by id) with their features as of ``as_of``: the average user that a new
    item's bias is levelled on (``towers.model.unknown_item_bias``)."""
    import torch

    from towers.candidates import user_vectors

    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    if len(ids) > MEAN_QUERY_USERS:
        ids = ids[np.linspace(0, len(ids) - 1, MEAN_QUERY_USERS).astype(np.int64)]
    queries = user_vectors(model, encoder, store, ids, as_of)  # (U, d + 1)
    return torch.from_numpy(queries[:, : model.cfg.dim].mean(axis=0))


def with_unknown_item_bias(
    reg: Any, version: str, item_ids: np.ndarray, vectors: np.ndarray, store: Any,
    user_ids: np.ndarray, as_of: Any, reference: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:  # fmt: skip
    """(N, D) index ``vectors`` of ``item_ids`` for a two-tower ``version``, the bias of the
    items its model never saw set as its config says (``TowerConfig.unknown_item_bias``: one
    bias, at which for the mean user of ``user_ids`` as of ``as_of`` the median of them scores
    as that quantile of the known items, as its evaluation scored them), the known items
    taken from ``reference`` (ids, vectors), by default the vectors themselves. A derived
    version passes its parent's whole table: if that holds items its model never saw, the
    new ones take their bias, so that every copied vector stays as it was and all share one
    level. A fallback's as they are."""
    if fallback.is_fallback(reg.info(version)):
        return vectors
    import torch

    from recsys.features.encoding import OOV
    from towers.model import unknown_item_bias

    model, encoder = _model(reg, version)
    quantile = model.cfg.unknown_item_bias
    unknown = encoder.item_index(np.asarray(item_ids)) == OOV  # (N,) bool
    if quantile is None or not unknown.any():
        return vectors
    ref_ids, ref = reference if reference is not None else (item_ids, vectors)
    known = encoder.item_index(np.asarray(ref_ids)) != OOV  # (R,) bool
    out = vectors.copy()
    if reference is not None and not known.all():  # the parent's level for items unseen
        out[unknown, -1] = np.median(ref[~known, -1])
        return out
    rows = np.concatenate([ref[known], vectors[unknown]])  # known rows first
    mask = torch.from_numpy(np.arange(len(rows)) >= known.sum())
    query = mean_query(model, encoder, store, user_ids, as_of)
    out[unknown] = unknown_item_bias(torch.from_numpy(rows), mask, quantile, model.cfg, query)[
        int(known.sum()) :
    ].numpy()
    return out


def version_candidates(reg: Any, version: str, store: Any, interactions: pd.DataFrame,
                       users: Any, item_ids: np.ndarray, vectors: np.ndarray, as_of: Any,
                       k: int) -> pa.Table:  # fmt: skip
    """Top-``k`` unseen items of every user with an event before ``as_of``, by ``version``
    against its item ``vectors`` (N, D). ``users``: a callable returning the users profile,
    read only for a fallback (segment popularity needs it)."""
    if fallback.is_fallback(reg.info(version)):
        from evaluation.fallback import candidates

        return candidates(reg.path(version), interactions, item_ids, as_of, version, k=k,
                          users=users())  # fmt: skip
    from towers.candidates import user_candidates

    model, encoder = _model(reg, version)
    return user_candidates(model, encoder, store, interactions, item_ids, vectors, as_of,
                           version, k=k)  # fmt: skip


def promotion_reason(info: dict[str, Any]) -> tuple[str, str]:
    """(kind, reason) of promoting a version with version.json ``info``: a fallback says which
    baseline and that no two-tower passed the gate."""
    if fallback.is_fallback(info):
        return "fallback", (f"pipeline: fallback {info.get('baseline')}, no two-tower passed "
                            "the quality gate")  # fmt: skip
    return "two-tower", "pipeline: quality gate passed"
