"""From the core encoder's arrays to tensors, and the data a training run needs.

The encoding itself (vocabularies, normalisation, the columns of each input) is
``recsys.features.encoding.FeatureEncoder``: numpy only, shared with the server. Here: its
arrays as tensors, the training rows and evaluation windows of a run (:class:`TowerData`),
cut from what is read once (:class:`TowerSource`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys.features.catalog import CATALOG
from recsys.features.encoding import FeatureEncoder, epoch_seconds
from recsys.features.spec import Catalog


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The encoder's arrays as tensors (shared memory, no copy)."""
    return {name: torch.from_numpy(value) for name, value in arrays.items()}


def user_tensors(
    encoder: FeatureEncoder, frame: Any, now: float | None = None
) -> dict[str, torch.Tensor]:
    """``encoder.encode_users`` as tensors: the user tower's batch."""
    return tensors(encoder.encode_users(frame, now))


def item_tensors(encoder: FeatureEncoder, frame: Any) -> dict[str, torch.Tensor]:
    """``encoder.encode_items`` as tensors: the item tower's batch."""
    return tensors(encoder.encode_items(frame))


def take(batch: dict[str, torch.Tensor], index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every tensor of an encoded batch (a slice: views, no copy)."""
    return {k: v[index] for k, v in batch.items()}


@dataclass
class EvalWindow:
    """One evaluation window: who, what they did, and both towers' inputs as of its start."""

    split: Any  # towers.evaluate.EvalSplit
    users: dict[str, torch.Tensor]  # rows aligned with split.user_ids
    items: dict[str, torch.Tensor]  # rows aligned with split.item_ids (the catalogue)


@dataclass
class TowerData:
    """Everything `train` needs: encoded training rows, sampling statistics, windows."""

    encoder: FeatureEncoder
    train_users: dict[str, torch.Tensor]  # one row per training interaction
    train_items: dict[str, torch.Tensor]
    log_q: torch.Tensor  # (n_items,) log frequency of each item index in the training stream
    catalogue: dict[str, torch.Tensor]  # every item, features as of the first window's start
    val: EvalWindow | None  # scored after each epoch (early stopping); None for a refit
    test: EvalWindow | None = None
    # (rows,) days from each training row to the newest one (recency-weighted loss)
    train_age_days: torch.Tensor | None = None


@dataclass
class TowerSource:
    """What every `TowerData` is cut from, read once: the point-in-time training set, the
    dataset's interactions and catalogue, and each evaluation window's Feast features."""

    table: pa.Table  # the training set, with its `split` column
    genres: list[str]
    interactions: pd.DataFrame
    item_ids: np.ndarray
    windows: dict[str, tuple[Any, pd.DataFrame, pd.DataFrame]]  # name -> (split, users, items)
    # Every item's features as of `as_of`: the catalogue of the all-data refit (None unless
    # load_source was asked for it).
    items_as_of: pd.DataFrame | None = None


def features_as_of(store: Any, service: str, key: str, ids: np.ndarray, when: Any) -> pd.DataFrame:
    """Feast point-in-time features of `ids` at time `when`, in the order of `ids`."""
    rows = pd.DataFrame({key: np.asarray(ids, dtype=np.int64), "event_timestamp": when})
    table = store.get_historical_features(
        entity_df=rows, features=store.get_feature_service(service)
    ).to_df()
    return table.set_index(key).loc[rows[key]].reset_index()


def load_source(
    settings: Any, store: Any | None = None, with_test: bool = True, with_as_of: bool = False
) -> TowerSource:
    """Read the training set and the features of the validation (and test) window; with
    ``with_as_of``, also the catalogue's features as of ``as_of`` (for the all-data refit)."""
    import pyarrow.parquet as pq

    from recsys.io import read_json
    from recsys.store import feature_store_for
    from towers.evaluate import build_eval_split

    paths = settings.paths
    store = store or feature_store_for(settings)
    summary = read_json(paths.training / "summary.json")
    cuts = {k: pd.Timestamp(v) for k, v in summary["cuts"].items()}
    interactions = pd.read_parquet(paths.dataset / "interactions.parquet")
    item_ids = pd.read_parquet(paths.dataset / "items.parquet").item_id.to_numpy()
    bounds = {"val": (cuts["val_start"], cuts["test_start"])}
    if with_test:
        bounds["test"] = (cuts["test_start"], cuts["as_of"])
    windows = {}
    for name, (start, end) in bounds.items():
        split = build_eval_split(interactions, item_ids, start, end)
        users = features_as_of(store, "user_tower_serving_v1", "user_id", split.user_ids, start)
        items = features_as_of(store, "item_tower_v1", "item_id", item_ids, start)
        windows[name] = (split, users, items)
    items_as_of = (features_as_of(store, "item_tower_v1", "item_id", item_ids, cuts["as_of"])
                   if with_as_of else None)  # fmt: skip
    return TowerSource(
        table=pq.read_table(paths.training / "training_set.parquet"),
        genres=read_json(paths.features / "manifest.json")["genres"],
        interactions=interactions,
        item_ids=item_ids,
        windows=windows,
        items_as_of=items_as_of,
    )


def tower_data(
    source: TowerSource, fit_on: tuple[str, ...] = ("train",), history: int = 20,
    catalog: Catalog = CATALOG,
) -> TowerData:  # fmt: skip
    """Training rows of the splits `fit_on`, encoded by an encoder fitted on those rows.

    ``("train",)``: the model whose epochs are chosen on the validation window.
    ``("train", "val")``: the refit for the test window (no validation window: it trains
    for the epochs chosen before); users first seen in validation are then known users.
    ``("train", "val", "test")``: the served model, refit on every row before ``as_of``; no
    window is held out, and its sampled negatives come from the catalogue as of ``as_of``
    (``source.items_as_of``, from ``load_source(with_as_of=True)``).
    ``catalog``: which features the encoder fits (another one in ablations: a feature
    retired or brought back, ``benchmarks/ablation_user_ids.py``).
    """
    table = source.table
    rows = table.filter(pa.compute.is_in(table.column("split"), pa.array(list(fit_on))))
    encoder = FeatureEncoder.fit(rows, source.genres, history, catalog=catalog)
    train_items = item_tensors(encoder, rows)
    counts = torch.bincount(train_items["item"], minlength=encoder.n_items).double()
    log_q = torch.log((counts / counts.sum()).clamp(min=1e-12)).float()

    def window(name: str) -> EvalWindow | None:
        if name not in source.windows:
            return None
        split, users, items = source.windows[name]
        return EvalWindow(split, user_tensors(encoder, users), item_tensors(encoder, items))

    if "test" in fit_on:  # the all-data refit: nothing is held out
        if source.items_as_of is None:
            raise ValueError("the all-data refit needs the catalogue as of as_of: "
                             "load_source(..., with_as_of=True)")  # fmt: skip
        val = test = None
        catalogue = item_tensors(encoder, source.items_as_of)
    else:
        refit = "val" in fit_on
        val, test = (None if refit else window("val")), window("test")
        first = val or test
        if first is None:
            raise ValueError("a refit on train + val needs the test window (with_test=True)")
        catalogue = first.items
    times = epoch_seconds(rows.column("event_timestamp"))
    age_days = torch.from_numpy((times.max(initial=0.0) - times) / 86400.0).float()
    return TowerData(
        encoder=encoder,
        train_age_days=age_days,
        train_users=user_tensors(encoder, rows),
        train_items=train_items,
        log_q=log_q,
        catalogue=catalogue,
        val=val,
        test=test,
    )


def load_tower_data(
    settings: Any, store: Any | None = None, with_test: bool = True, history: int = 20
) -> TowerData:
    """Training rows from the point-in-time training set; evaluation windows from Feast."""
    return tower_data(load_source(settings, store, with_test), ("train",), history)
