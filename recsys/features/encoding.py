"""From feature rows to the towers' inputs: vocabularies, normalisation, numpy arrays.

One encoder for any batch size (TF Transform's idea): :class:`FeatureEncoder` is fitted on
the training split only (vocabularies of ids and categories, mean and standard deviation of
each numeric feature), saved in the checkpoint, and encodes a Feast online lookup exactly as
training encoded the offline rows. Which column feeds which input is read from the
catalogue's encodings (``recsys.features.inputs``), never listed here. Numpy only: the server
encodes without torch (``towers.data`` turns the arrays into tensors for training).

Index 0 of every id and category vocabulary is the out-of-vocabulary slot; item index 1 is
padding for short histories (kept apart from "unknown item").

Each history position also gets `HISTORY_FEATURES` numbers (:func:`history_features`): the
rating given (standardised, with a missing flag) and how long before the row's reference
time the event happened (log1p of hours, standardised, with a missing flag). The reference
time is the row's ``event_timestamp``: a training row's interaction time, an evaluation
window's start, or, at serving, the request time (``now``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.features.catalog import CATALOG
from recsys.features.inputs import TowerColumns
from recsys.features.spec import Catalog

OOV, PAD = 0, 1  # item vocabulary: 0 unknown item, 1 padding, 2.. known items
# Per history position: rating z-score, rating missing, log1p(hours ago) z-score, time missing.
HISTORY_FEATURES = 4
# Standardised times are clipped to this many deviations: serving a stale dataset months
# after its last event must not feed the tower values far outside what it was trained on.
TIME_CLIP = 4.0
# The exported user tower (towers.export writes it, serving runs it without torch): its
# file in a version's folder, its inputs (encode_users' keys, in argument order), its output.
USER_TOWER_FILE = "user_tower.onnx"
USER_INPUTS = ("user", "cats", "nums", "affinity", "history", "history_feats")
USER_OUTPUT = "user_vector"


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
    The row path calls this too, so one row encodes exactly as a batch does."""
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
    """Vocabularies and normalisation statistics, fitted on training rows; ``catalog`` says
    which columns they belong to (not saved: the checkpoint's dict is the fitted values)."""

    user_ids: list[int]
    item_ids: list[int]
    cats: dict[str, list[str]]
    genres: list[str]
    stats: dict[str, tuple[float, float]]
    history: int = 20
    catalog: Catalog = field(default=CATALOG, repr=False, compare=False)
    _lookups: dict[str, pd.Index] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A saved encoder may have been fitted on a feature retired since (Feature.retired).
        self.columns = TowerColumns.of(self.catalog, retired=True).fitted(self.cats, self.stats)

    @classmethod
    def fit(
        cls, rows: pd.DataFrame | pa.Table, genres: list[str], history: int,
        catalog: Catalog = CATALOG,
    ) -> FeatureEncoder:  # fmt: skip
        """Fitted on ``rows``. From an Arrow table only the scalar columns go through pandas:
        the list columns are read from Arrow (a million rows' lists as Python objects took
        longer than the rest of the fit)."""
        c = TowerColumns.of(catalog)
        nums = (*c.user_nums, *c.item_nums)
        if isinstance(rows, pa.Table):
            frame = rows.select(["user_id", "item_id", *c.user_cats, *(n for n, _ in nums)])
            frame = frame.to_pandas()
        else:
            frame = rows
        cats = {name: sorted(frame[name].dropna().unique().tolist()) for name in c.user_cats}
        stats = {}
        for name, log in nums:
            values = frame[name].astype("float64").dropna()
            values = np.log1p(values) if log else values
            std = float(values.std()) if len(values) > 1 else 1.0
            stats[name] = (float(values.mean()) if len(values) else 0.0, std if std > 0 else 1.0)
        _, present = _padded(_column(rows, c.history_items), history, 0, np.int64)
        ratings, _ = _padded(_column(rows, c.history_ratings), history, np.nan)
        times, _ = _padded(_column(rows, c.history_times), history, np.nan)
        hours = log_hours(epoch_seconds(_column(rows, "event_timestamp")), times)
        stats["history_rating"] = _mean_std(ratings[present & ~np.isnan(ratings)])
        stats["history_log_hours"] = _mean_std(hours[present & ~np.isnan(hours)])
        return cls(
            user_ids=sorted(frame.user_id.unique().tolist()),
            item_ids=sorted(frame.item_id.unique().tolist()),
            cats=cats,
            genres=list(genres),
            stats=stats,
            history=history,
            catalog=catalog,
        )

    # --- serialisation (the checkpoint carries this) -------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "user_ids": self.user_ids, "item_ids": self.item_ids, "cats": self.cats,
            "genres": self.genres, "stats": self.stats, "history": self.history,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict[str, Any], catalog: Catalog = CATALOG) -> FeatureEncoder:
        stats = {k: (float(v[0]), float(v[1])) for k, v in values["stats"].items()}
        return cls(**{**values, "stats": stats}, catalog=catalog)

    # --- sizes the model needs ------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_ids) + 1  # + OOV

    @property
    def n_items(self) -> int:
        return len(self.item_ids) + 2  # + OOV, PAD

    def cat_sizes(self) -> list[int]:
        return [len(self.cats[c]) + 1 for c in self.columns.user_cats]

    @property
    def user_width(self) -> int:
        """Width of the users' ``nums``: a value and a missing flag per numeric."""
        return 2 * len(self.columns.user_nums)

    @property
    def item_width(self) -> int:
        return 2 * len(self.columns.item_nums)

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

    def encode_users(self, frame: Any, now: float | None = None) -> dict[str, np.ndarray]:
        """User-tower inputs from rows with user_id and the user feature columns. History
        times are measured back from ``now`` (epoch seconds) if given, else from each row's
        ``event_timestamp``."""
        c = self.columns
        cats = []
        for name in c.user_cats:
            found = self._index(name, self.cats[name]).get_indexer(
                _column(frame, name).to_pandas().astype(object).to_numpy()
            )
            cats.append(np.where(found < 0, 0, found + 1))
        ids, present = _padded(_column(frame, c.history_items), self.history, 0, np.int64)
        history = np.full(ids.shape, PAD, dtype=np.int64)
        history[present] = self.item_index(ids[present])
        affinity, _ = _padded(_column(frame, c.affinity), len(self.genres), 0.0)
        ratings, _ = _padded(_column(frame, c.history_ratings), self.history, np.nan)
        times, _ = _padded(_column(frame, c.history_times), self.history, np.nan)
        reference = (
            np.full(len(history), float(now))
            if now is not None
            else epoch_seconds(_column(frame, "event_timestamp"))
        )
        return {
            "user": self.user_index(_column(frame, "user_id").to_numpy()),  # (R,)
            "cats": np.stack(cats, axis=1),  # (R, len(user_cats))
            "nums": self._numeric(frame, c.user_nums).astype(np.float32),  # (R, user_width)
            "affinity": affinity.astype(np.float32),  # (R, G)
            "history": history,  # (R, L)
            "history_feats": history_features(ratings, times, present, reference, self.stats),
        }  # history_feats: (R, L, HISTORY_FEATURES)

    def encode_items(self, frame: Any) -> dict[str, np.ndarray]:
        """Item-tower inputs from rows with item_id and the item feature columns."""
        genres = _column(frame, self.columns.item_genres).combine_chunks()
        flat = pc.list_flatten(genres).to_numpy(zero_copy_only=False)
        rows = pc.list_parent_indices(genres).to_numpy()
        found = self._index("genre", self.genres).get_indexer(flat)
        bag = np.zeros((len(genres), len(self.genres)), dtype=np.float32)
        keep = found >= 0
        bag[rows[keep], found[keep]] = 1.0
        return {
            "item": self.item_index(_column(frame, "item_id").to_numpy()),  # (R,)
            "genres": bag,  # (R, G)
            "nums": self._numeric(frame, self.columns.item_nums).astype(np.float32),
        }  # nums: (R, item_width)
