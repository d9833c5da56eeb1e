"""From feature rows to tensors: vocabularies, normalisation, and the data a run needs.

`FeatureEncoder` is fitted on the training split only (vocabularies of ids and categories,
mean and standard deviation of each numeric feature) and is saved in the checkpoint, so
serving encodes a Feast online lookup exactly as training encoded the offline rows.
Index 0 of every id and category vocabulary is the out-of-vocabulary slot; item index 1 is
padding for short histories (kept apart from "unknown item").

Each history position also gets `HISTORY_FEATURES` numbers (:func:`history_features`): the
rating given (standardised, with a missing flag) and how long before the row's reference
time the event happened (log1p of hours, standardised, with a missing flag). The reference
time is the row's ``event_timestamp``: a training row's interaction time, an evaluation
window's start (``features_as_of``), or, at serving, the request time (``now``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

USER_CATS = ("age_bucket", "gender", "occupation", "zip_prefix")
# (column, log1p?) — counts are heavy-tailed, so they are compared on a log scale.
USER_NUMS = (("user_interaction_count", True), ("user_mean_rating", False))
ITEM_NUMS = (
    ("item_release_year", False),
    ("item_interaction_count", True),
    ("item_mean_rating", False),
    ("item_count_7d", True),
    ("item_count_30d", True),
)
OOV, PAD = 0, 1  # item vocabulary: 0 unknown item, 1 padding, 2.. known items
# Per history position: rating z-score, rating missing, log1p(hours ago) z-score, time missing.
HISTORY_FEATURES = 4
# Standardised times are clipped to this many deviations: serving a stale dataset months
# after its last event must not feed the tower values far outside what it was trained on.
TIME_CLIP = 4.0


def _column(frame: pd.DataFrame | pa.Table, name: str) -> pa.ChunkedArray:
    if isinstance(frame, pa.Table):
        return frame.column(name)
    return pa.chunked_array([pa.array(frame[name], from_pandas=True)])


def _padded(
    column: pa.ChunkedArray, width: int, fill: float | int, dtype: Any = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a (rows, width) array of its first `width` elements (`fill`
    elsewhere), and the (rows, width) mask of the cells that hold an element."""
    array = column.combine_chunks()
    if pa.types.is_null(array.type):  # every row missing (pandas gave no list type)
        return np.full((len(array), width), fill, dtype=dtype), np.zeros((len(array), width), bool)
    if isinstance(array, pa.LargeListArray):
        array = array.cast(pa.list_(array.type.value_type))
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)
    starts = offsets[:-1]
    lengths = np.where(nulls, 0, np.minimum(np.diff(offsets), width))
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]  # (R, width)
    out = np.full((len(array), width), fill, dtype=dtype)
    if values.size:
        positions = np.minimum(starts[:, None] + cols[None, :], values.size - 1)
        out[mask] = values[positions[mask]]
    return out, mask


def epoch_seconds(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as float64 seconds since the epoch."""
    array = column.combine_chunks()
    array = array.cast(pa.timestamp("us", tz=array.type.tz), safe=False)
    return array.cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6


def history_cells(frame: Any, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, width) ratings and event times (epoch seconds) of the recent items, NaN where
    unknown, and the mask of the positions holding an item."""
    _, present = _padded(_column(frame, "recent_item_ids"), width, 0, np.int64)
    ratings, _ = _padded(_column(frame, "recent_item_ratings"), width, np.nan)
    times, _ = _padded(_column(frame, "recent_item_timestamps"), width, np.nan)
    return ratings, times, present


def log_hours(reference: np.ndarray, times: np.ndarray) -> np.ndarray:
    """log1p of the hours from each event (R, L) to its row's reference time (R,); an event
    after the reference (a client's clock ahead) counts as now."""
    return np.log1p(np.clip(reference[:, None] - times, 0, None) / 3600.0)


def history_features(
    ratings: np.ndarray,
    times: np.ndarray,
    present: np.ndarray,
    reference: np.ndarray,
    stats: dict[str, tuple[float, float]],
) -> np.ndarray:
    """(R, L, HISTORY_FEATURES) float32 per-position inputs; padding positions are zeros.
    ``serving.encoding`` calls this too, so one row encodes exactly as a batch does."""
    rated, timed = present & ~np.isnan(ratings), present & ~np.isnan(times)
    (r_mean, r_std), (t_mean, t_std) = stats["history_rating"], stats["history_log_hours"]
    hours = np.clip((log_hours(reference, times) - t_mean) / t_std, -TIME_CLIP, TIME_CLIP)
    return np.stack(
        [
            np.where(rated, (ratings - r_mean) / r_std, 0.0),
            (present & ~rated).astype(np.float64),
            np.where(timed, hours, 0.0),
            (present & ~timed).astype(np.float64),
        ],
        axis=-1,
    ).astype(np.float32)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    std = float(values.std()) if values.size > 1 else 1.0
    return (float(values.mean()) if values.size else 0.0, std if std > 0 else 1.0)


@dataclass
class FeatureEncoder:
    """Vocabularies and normalisation statistics, fitted on training rows."""

    user_ids: list[int]
    item_ids: list[int]
    cats: dict[str, list[str]]
    genres: list[str]
    stats: dict[str, tuple[float, float]]
    history: int = 20
    _lookups: dict[str, pd.Index] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, rows: pd.DataFrame | pa.Table, genres: list[str], history: int) -> FeatureEncoder:
        """Fitted on ``rows``. From an Arrow table only the scalar columns go through pandas:
        the list columns are read from Arrow (a million rows' lists as Python objects took
        longer than the rest of the fit)."""
        if isinstance(rows, pa.Table):
            scalars = ["user_id", "item_id", *USER_CATS, *(n for n, _ in (*USER_NUMS, *ITEM_NUMS))]
            frame = rows.select(scalars).to_pandas()
        else:
            frame = rows
        cats = {c: sorted(frame[c].dropna().unique().tolist()) for c in USER_CATS}
        stats = {}
        for name, log in (*USER_NUMS, *ITEM_NUMS):
            values = frame[name].astype("float64").dropna()
            values = np.log1p(values) if log else values
            std = float(values.std()) if len(values) > 1 else 1.0
            stats[name] = (float(values.mean()) if len(values) else 0.0, std if std > 0 else 1.0)
        ratings, times, present = history_cells(rows, history)
        reference = epoch_seconds(_column(rows, "event_timestamp"))
        hours = log_hours(reference, times)
        stats["history_rating"] = _mean_std(ratings[present & ~np.isnan(ratings)])
        stats["history_log_hours"] = _mean_std(hours[present & ~np.isnan(hours)])
        return cls(
            user_ids=sorted(frame.user_id.unique().tolist()),
            item_ids=sorted(frame.item_id.unique().tolist()),
            cats=cats,
            genres=list(genres),
            stats=stats,
            history=history,
        )

    # --- serialisation (the checkpoint carries this) -------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "user_ids": self.user_ids, "item_ids": self.item_ids, "cats": self.cats,
            "genres": self.genres, "stats": self.stats, "history": self.history,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureEncoder:
        stats = {k: (float(v[0]), float(v[1])) for k, v in values["stats"].items()}
        return cls(**{**values, "stats": stats})

    # --- sizes the model needs ------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_ids) + 1  # + OOV

    @property
    def n_items(self) -> int:
        return len(self.item_ids) + 2  # + OOV, PAD

    def cat_sizes(self) -> list[int]:
        return [len(self.cats[c]) + 1 for c in USER_CATS]

    # --- encoding -------------------------------------------------------------------------
    def _index(self, name: str, values: list) -> pd.Index:
        if name not in self._lookups:
            self._lookups[name] = pd.Index(values)
        return self._lookups[name]

    def user_index(self, ids: Any) -> np.ndarray:
        found = self._index("user", self.user_ids).get_indexer(np.asarray(ids))
        return np.where(found < 0, 0, found + 1)

    def item_index(self, ids: Any) -> np.ndarray:
        found = self._index("item", self.item_ids).get_indexer(np.asarray(ids))
        return np.where(found < 0, OOV, found + 2)

    def _numeric(self, frame: Any, specs: tuple[tuple[str, bool], ...]) -> np.ndarray:
        columns, missing = [], []
        for name, log in specs:
            values = _column(frame, name).to_numpy().astype("float64")
            nan = np.isnan(values)
            values = np.log1p(np.clip(values, 0, None)) if log else values
            mean, std = self.stats[name]
            columns.append(np.where(nan, 0.0, (values - mean) / std))
            missing.append(nan.astype("float64"))
        return np.stack(columns + missing, axis=1)  # (R, 2 * len(specs))

    def encode_users(self, frame: Any, now: float | None = None) -> dict[str, torch.Tensor]:
        """User-tower inputs from rows with user_id and the user feature columns. History
        times are measured back from ``now`` (epoch seconds) if given, else from each row's
        ``event_timestamp``."""
        cats = []
        for name in USER_CATS:
            found = self._index(name, self.cats[name]).get_indexer(
                _column(frame, name).to_pandas().astype(object).to_numpy()
            )
            cats.append(np.where(found < 0, 0, found + 1))
        ids, present = _padded(_column(frame, "recent_item_ids"), self.history, 0, np.int64)
        history = np.full(ids.shape, PAD, dtype=np.int64)
        history[present] = self.item_index(ids[present])
        affinity, _ = _padded(_column(frame, "user_genre_affinity"), len(self.genres), 0.0)
        ratings, times, _ = history_cells(frame, self.history)
        reference = (
            np.full(len(history), float(now))
            if now is not None
            else epoch_seconds(_column(frame, "event_timestamp"))
        )
        feats = history_features(ratings, times, present, reference, self.stats)
        return {
            "user": torch.from_numpy(self.user_index(_column(frame, "user_id").to_numpy())),
            "cats": torch.from_numpy(np.stack(cats, axis=1)),  # (R, 4)
            "nums": torch.from_numpy(self._numeric(frame, USER_NUMS)).float(),  # (R, 4)
            "affinity": torch.from_numpy(affinity).float(),  # (R, G)
            "history": torch.from_numpy(history),  # (R, L)
            "history_feats": torch.from_numpy(feats),  # (R, L, HISTORY_FEATURES)
        }

    def encode_items(self, frame: Any) -> dict[str, torch.Tensor]:
        """Item-tower inputs from rows with item_id and the item feature columns."""
        genres = _column(frame, "item_genres").combine_chunks()
        flat = pa.compute.list_flatten(genres).to_numpy(zero_copy_only=False)
        rows = pa.compute.list_parent_indices(genres).to_numpy()
        found = self._index("genre", self.genres).get_indexer(flat)
        bag = np.zeros((len(genres), len(self.genres)), dtype=np.float32)
        keep = found >= 0
        bag[rows[keep], found[keep]] = 1.0
        return {
            "item": torch.from_numpy(self.item_index(_column(frame, "item_id").to_numpy())),
            "genres": torch.from_numpy(bag),  # (R, G)
            "nums": torch.from_numpy(self._numeric(frame, ITEM_NUMS)).float(),  # (R, 10)
        }


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
    source: TowerSource, fit_on: tuple[str, ...] = ("train",), history: int = 20
) -> TowerData:
    """Training rows of the splits `fit_on`, encoded by an encoder fitted on those rows.

    ``("train",)``: the model whose epochs are chosen on the validation window.
    ``("train", "val")``: the refit for the test window (no validation window: it trains
    for the epochs chosen before); users first seen in validation are then known users.
    ``("train", "val", "test")``: the served model, refit on every row before ``as_of``; no
    window is held out, and its sampled negatives come from the catalogue as of ``as_of``
    (``source.items_as_of``, from ``load_source(with_as_of=True)``).
    """
    table = source.table
    rows = table.filter(pa.compute.is_in(table.column("split"), pa.array(list(fit_on))))
    encoder = FeatureEncoder.fit(rows, source.genres, history)
    train_items = encoder.encode_items(rows)
    counts = torch.bincount(train_items["item"], minlength=encoder.n_items).double()
    log_q = torch.log((counts / counts.sum()).clamp(min=1e-12)).float()

    def window(name: str) -> EvalWindow | None:
        if name not in source.windows:
            return None
        split, users, items = source.windows[name]
        return EvalWindow(split, encoder.encode_users(users), encoder.encode_items(items))

    if "test" in fit_on:  # the all-data refit: nothing is held out
        if source.items_as_of is None:
            raise ValueError("the all-data refit needs the catalogue as of as_of: "
                             "load_source(..., with_as_of=True)")  # fmt: skip
        val = test = None
        catalogue = encoder.encode_items(source.items_as_of)
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
        train_users=encoder.encode_users(rows),
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
