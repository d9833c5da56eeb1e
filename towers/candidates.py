"""Item vectors and top-K candidates of one model version, as of a time.

- `item_vectors`: the catalogue through the item tower, with the item features Feast
  returns as of ``as_of``, as the vectors of a dot-product index ([v / T, bias]).
- `user_candidates`: every known user's features as of ``as_of`` through the user tower,
  scored against those vectors, items the user already interacted with removed, top K kept.
  Written as ``candidates.parquet`` in the version's folder and, for the current version,
  pushed into the online store (Feast view ``user_candidates``) where serving reads them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from recsys.io import atomic_write_bytes
from towers.evaluate import user_block

CANDIDATES_VIEW = "user_candidates"


def item_vectors(
    model: Any, encoder: Any, store: Any, item_ids: np.ndarray, as_of: Any
) -> np.ndarray:
    """(N, d + 1) float32 index vectors of ``item_ids`` as of ``as_of``."""
    from towers.data import features_as_of, item_tensors
    from towers.model import index_vectors
    from towers.train import embed

    frame = features_as_of(store, "item_tower_v1", "item_id", item_ids, as_of)
    vectors = embed(model.item_tower, item_tensors(encoder, frame))
    return index_vectors(vectors, model.cfg).numpy().astype(np.float32)


def user_vectors(
    model: Any, encoder: Any, store: Any, user_ids: np.ndarray, as_of: Any
) -> np.ndarray:
    """(U, d + 1) float32 query vectors of ``user_ids`` as of ``as_of``."""
    from towers.data import features_as_of, user_tensors
    from towers.model import query_vectors
    from towers.train import embed

    frame = features_as_of(store, "user_tower_serving_v1", "user_id", user_ids, as_of)
    return query_vectors(embed(model.user_tower, user_tensors(encoder, frame))).numpy()


def seen_matrix(
    interactions: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
) -> sp.csr_matrix:
    """(U, N) 1 where the user interacted with the item (in ``interactions``)."""
    users = pd.Index(user_ids).get_indexer(interactions.user_id.to_numpy())
    items = pd.Index(item_ids).get_indexer(interactions.item_id.to_numpy())
    keep = (users >= 0) & (items >= 0)
    ones = np.ones(int(keep.sum()), dtype=np.float32)
    shape = (len(user_ids), len(item_ids))
    return sp.csr_matrix((ones, (users[keep], items[keep])), shape=shape)


def top_k(
    queries: np.ndarray, vectors: np.ndarray, seen: sp.csr_matrix, k: int, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (U, k) and scores (U, k) of the best unseen items per query, best first;
    ``block`` queries scored at once, fewer on a large catalogue (``user_block``)."""
    k = min(k, vectors.shape[0])
    block = user_block(block, vectors.shape[0])
    positions = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for lo in range(0, len(queries), block):
        s = torch.from_numpy(queries[lo : lo + block] @ vectors.T)  # (B, N)
        rows = seen[lo : lo + block].tocoo()
        s[rows.row, rows.col] = float("-inf")
        best = torch.topk(s, k, dim=1)
        positions[lo : lo + block] = best.indices.numpy()
        scores[lo : lo + block] = best.values.numpy()
    return positions, scores


def user_candidates(
    model: Any,
    encoder: Any,
    store: Any,
    interactions: pd.DataFrame,
    item_ids: np.ndarray,
    vectors: np.ndarray,
    as_of: datetime,
    version: str,
    k: int = 100,
) -> pa.Table:
    """Top-``k`` unseen items for every user with an interaction before ``as_of``."""
    before = interactions[interactions.event_timestamp < pd.Timestamp(as_of)]
    user_ids = np.sort(before.user_id.unique())
    queries = user_vectors(model, encoder, store, user_ids, as_of)
    positions, scores = top_k(queries, vectors, seen_matrix(before, user_ids, item_ids), k)
    return candidate_table(user_ids, item_ids, positions, scores, as_of, version)


def candidate_table(user_ids: np.ndarray, item_ids: np.ndarray, positions: np.ndarray,
                    scores: np.ndarray, as_of: datetime, version: str) -> pa.Table:  # fmt: skip
    """The candidates table (one row per user, lists best first) from ``top_k``'s output."""
    finite = np.isfinite(scores)  # a user who has seen nearly everything gets fewer than k
    lengths = finite.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(item_ids[positions][finite]))
    vals = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[finite]))
    return pa.table({
        "user_id": pa.array(user_ids, pa.int64()),
        "event_timestamp": pa.array([pd.Timestamp(as_of)] * len(user_ids),
                                    pa.timestamp("us", tz="UTC")),
        "candidate_item_ids": ids,
        "candidate_scores": vals.cast(pa.list_(pa.float32())),
        "model_version": pa.array([version] * len(user_ids), pa.string()),
    })  # fmt: skip


def write_table(table: pa.Table, path: Path) -> Path:
    """Parquet written to a temp name, then renamed."""
    import io

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def push_online(store: Any, table: pa.Table) -> int:
    """Write candidate rows into the online store (Feast ``write_to_online_store``)."""
    frame = table.to_pandas()
    frame["candidate_item_ids"] = frame["candidate_item_ids"].map(list)
    frame["candidate_scores"] = frame["candidate_scores"].map(list)
    store.write_to_online_store(CANDIDATES_VIEW, frame)
    return len(frame)
