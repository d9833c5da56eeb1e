"""User and item versions: which rows of an incoming batch are new, changed, no-ops or
conflicts, and the merge of the versions into a dataset's current and history tables.

A version is one row of ``users`` or ``items`` (`recsys.schema`): an entity's attributes,
true from ``valid_from`` until the entity's next version. Against the versions already
known (the dataset's current and history tables, and the accepted batches waiting):

* a row whose (id, valid_from) is known with the same attributes, or whose attributes equal
  the version in force just before it (a re-sent profile), is a **no-op**: dropped, counted;
* a row whose (id, valid_from) is known with other attributes is a **conflict**: the sender
  rewrites a past version, and the whole batch is rejected;
* any other row is a new version: of a **new** entity, or a **changed** one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.schema import HISTORY, PRIMARY_KEYS, TABLES, VALID_FROM, attributes

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


@dataclass(frozen=True)
class Versions:
    """A batch's rows of one table sorted into what they do."""

    new: pd.DataFrame  # the rows to append: new versions only
    new_ids: int = 0  # entities that had no version before
    changed_ids: int = 0  # known entities with a new version
    unchanged: int = 0  # no-op rows, dropped
    conflicts: list[str] = field(default_factory=list)  # one sentence per conflicting row

    def counts(self) -> dict[str, int]:
        return {"new": self.new_ids, "changed": self.changed_ids, "unchanged": self.unchanged}


def _value(v: Any) -> Any:
    """A cell as a comparable Python value: lists as tuples, missing as None."""
    if isinstance(v, list | tuple | np.ndarray):
        return tuple(_value(x) for x in v)
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _stamps(frame: pd.DataFrame) -> pd.Series:
    stamps = pd.to_datetime(frame[VALID_FROM], utc=True) if VALID_FROM in frame else None
    return pd.Series(EPOCH, index=frame.index) if stamps is None else stamps.fillna(EPOCH)


def read_versions(files: Sequence[Path], table: str, ids: Any = None) -> pd.DataFrame:
    """The versions in ``files`` (those that exist) for ``ids`` (None: all); a file without
    ``valid_from`` (a dataset published before versions) is at the epoch."""
    key, frames = PRIMARY_KEYS[table], []
    for path in files:
        if not Path(path).exists():
            continue
        filters = None if ids is None else [(key, "in", list(ids))]
        frame = pq.read_table(path, filters=filters).to_pandas()
        frame[VALID_FROM] = _stamps(frame)
        frames.append(frame[TABLES[table].names])
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=TABLES[table].names)
    )


def dataset_files(dataset: Path, table: str) -> list[Path]:
    return [Path(dataset) / f"{table}.parquet", Path(dataset) / f"{HISTORY[table]}.parquet"]


def classify(table: str, batch: pd.DataFrame, known: pd.DataFrame) -> Versions:
    """Sort the (validated) ``batch`` rows of ``table`` against the ``known`` versions."""
    key, names = PRIMARY_KEYS[table], attributes(table)
    timeline: dict[Any, dict[pd.Timestamp, tuple]] = {}
    for row in known.itertuples(index=False):
        values = row._asdict()
        timeline.setdefault(values[key], {})[pd.Timestamp(values[VALID_FROM])] = tuple(
            _value(values[n]) for n in names
        )
    existed = set(timeline)
    batch = batch.assign(**{VALID_FROM: _stamps(batch)}).sort_values(
        [key, VALID_FROM], kind="stable"
    )
    keep, unchanged, conflicts, touched = [], 0, [], set()
    for index, row in zip(batch.index, batch.itertuples(index=False), strict=True):
        values = row._asdict()
        entity, when = values[key], pd.Timestamp(values[VALID_FROM])
        attrs = tuple(_value(values[n]) for n in names)
        versions = timeline.setdefault(entity, {})
        if when in versions:
            if versions[when] == attrs:
                unchanged += 1
            else:
                recorded = dict(zip(names, versions[when], strict=True))
                conflicts.append(f"{key} {entity} at valid_from {when.isoformat()}: "
                                 f"{dict(zip(names, attrs, strict=True))} differs from the "
                                 f"version already recorded, {recorded}")  # fmt: skip
            continue
        before = [t for t in versions if t < when]
        if before and versions[max(before)] == attrs:
            unchanged += 1  # what was already true: a re-sent profile
            continue
        versions[when] = attrs
        keep.append(index)
        touched.add(entity)
    new = batch.loc[keep].reset_index(drop=True)
    return Versions(new, len(touched - existed), len(touched & existed), unchanged, conflicts)


def to_arrow(table: str, frame: pd.DataFrame) -> pa.Table:
    """A frame of ``table`` versions in the canonical schema."""
    frame = frame.assign(**{VALID_FROM: _stamps(frame).astype("datetime64[us, UTC]")})
    return pa.Table.from_pandas(
        frame[TABLES[table].names], schema=TABLES[table], preserve_index=False
    )
