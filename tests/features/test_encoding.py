"""The core encoder (``recsys.features.encoding``): its columns are the catalogue's, in the
order checkpoints were trained with; an encoder dict as older versions saved it still loads
and keeps its own inputs when the catalogue grows; the one-row path gives exactly the batch
arrays; and none of it imports torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from recsys.features.catalog import CATALOG
from recsys.features.encoding import PAD, FeatureEncoder
from recsys.features.ops import Column, Count
from recsys.features.row_encoding import RowEncoder
from recsys.features.spec import Catalog, Encoding, Feature
from tests.towers.test_model import GENRES, T0, rows

# A checkpoint's encoder dict, as every version so far wrote it (FeatureEncoder.to_dict).
SAVED = {
    "user_ids": [1, 2], "item_ids": [10, 11, 12],
    "cats": {"age_bucket": ["18-24"], "gender": ["F", "M"], "occupation": ["writer"],
             "zip_prefix": ["100"]},
    "genres": GENRES,
    "stats": {"user_interaction_count": [1.0, 0.5], "user_mean_rating": [3.5, 1.0],
              "item_release_year": [1990.0, 10.0], "item_interaction_count": [1.0, 1.0],
              "item_mean_rating": [3.0, 1.0], "item_count_7d": [0.5, 1.0],
              "item_count_30d": [1.0, 1.0], "history_rating": [3.5, 1.0],
              "history_log_hours": [2.0, 1.0]},
    "history": 4,
}  # fmt: skip


def extended() -> Catalog:
    """CATALOG with one more CATEGORICAL and one more LOG_NUMERIC user feature."""
    more = {
        "user_profile": Feature("user_region", "string", Column("region"), Encoding.CATEGORICAL),
        "user_activity": Feature("user_rating_count", "int64", Count(), Encoding.LOG_NUMERIC),
    }
    views = tuple(replace(v, features=(*v.features, more[v.name])) if v.name in more else v
                  for v in CATALOG.views)  # fmt: skip
    return replace(CATALOG, views=views)


def extended_rows():
    return rows().assign(user_region=["north", "south", None, "north", "east", "south"],
                         user_rating_count=[None, 0, 3, 10, 2, 100])  # fmt: skip


def test_the_catalogues_columns_in_the_order_checkpoints_were_trained_with():
    c = FeatureEncoder.fit(rows(), GENRES, history=4).columns
    # zip_prefix is retired: still a column of the rows, no longer fitted.
    assert c.user_cats == ("age_bucket", "gender", "occupation", "zip_region")
    assert c.user_nums == (("user_interaction_count", True), ("user_mean_rating", False))
    assert c.item_nums == (("item_release_year", False), ("item_interaction_count", True),
                           ("item_mean_rating", False), ("item_count_7d", True),
                           ("item_count_30d", True))  # fmt: skip
    assert (c.affinity, c.item_genres) == ("user_genre_affinity", "item_genres")
    assert (c.history_items, c.history_ratings, c.history_times) == (
        "recent_item_ids", "recent_item_ratings", "recent_item_timestamps")  # fmt: skip


def test_a_saved_encoder_loads_and_keeps_its_inputs_when_the_catalogue_grows():
    encoder = FeatureEncoder.from_dict(SAVED)
    assert encoder.to_dict().keys() == SAVED.keys()
    # Fitted on zip_prefix, retired since: the saved encoder keeps it, and not zip_region.
    assert encoder.columns.user_cats == ("age_bucket", "gender", "occupation", "zip_prefix")
    assert encoder.stats["user_mean_rating"] == (3.5, 1.0)  # lists (JSON) become tuples
    batch = encoder.encode_users(rows(), now=T0 + 10 * 86400)
    assert batch["cats"].shape == (6, 4) and batch["nums"].shape == (6, 4)
    # Rows 0..: user_interaction_count None, 1, 2, ...: log1p(1) standardised by (1.0, 0.5).
    assert batch["nums"][1, 0] == np.float32((np.log1p(1.0) - 1.0) / 0.5)
    assert batch["nums"][0].tolist()[2:] == [1.0, 1.0]  # both missing flags of row 0
    # Two features added to the catalogue: the saved encoder still has its four + four inputs.
    old = FeatureEncoder.from_dict(SAVED, extended())
    assert old.columns == encoder.columns and len(old.cat_sizes()) == 4 and old.user_width == 4
    with pytest.raises(ValueError, match="user_region"):
        FeatureEncoder.from_dict({**SAVED, "cats": {**SAVED["cats"], "user_region": []}})


def test_an_extended_catalogue_adds_a_column_to_cats_and_nums_batch_and_row():
    frame, now = extended_rows(), T0 + 30 * 86400.0
    encoder = FeatureEncoder.fit(frame, GENRES, history=4, catalog=extended())
    plain = FeatureEncoder.fit(frame, GENRES, history=4)
    batch, before = encoder.encode_users(frame, now), plain.encode_users(frame, now)
    assert encoder.cat_sizes() == [*plain.cat_sizes(), 4]  # east, north, south + unseen
    assert batch["cats"].shape == (6, 5) and batch["nums"].shape == (6, 6)
    assert batch["cats"][:, 4].tolist() == [2, 3, 0, 2, 1, 3]  # sorted vocabulary + 1; 0 missing
    logs = np.log1p([0.0, 3, 10, 2, 100])
    want = (logs - logs.mean()) / logs.std(ddof=1)
    np.testing.assert_allclose(batch["nums"][1:, 2], want.astype(np.float32), rtol=1e-6)
    assert batch["nums"][0, 2] == 0.0 and batch["nums"][:, 5].tolist() == [1, 0, 0, 0, 0, 0]
    # The declared features keep their columns and values.
    assert np.array_equal(batch["cats"][:, :4], before["cats"])
    assert np.array_equal(batch["nums"][:, [0, 1, 3, 4]], before["nums"])
    # The one-row path gives the same arrays, exactly.
    one = RowEncoder(encoder)
    for i, row in enumerate(frame.to_dict("records")):
        got = one.arrays(int(row.pop("user_id")), row, now)
        assert got.keys() == batch.keys()
        for name, array in got.items():
            assert array.dtype == batch[name].dtype and np.array_equal(array[0], batch[name][i])


def test_the_row_path_equals_the_batch_on_unknown_users_and_items():
    encoder = FeatureEncoder.fit(rows(), GENRES, history=4)
    frame = rows().assign(user_id=[1, 999, 2, 3, 999, 1], occupation=["writer", "astronaut",
                          None, "student", "writer", "x"])  # fmt: skip
    batch, one = encoder.encode_users(frame, T0), RowEncoder(encoder)
    assert batch["history"][4].tolist()[0] == 0 and batch["history"][0].tolist() == [PAD] * 4
    for i, row in enumerate(frame.to_dict("records")):
        got = one.arrays(int(row.pop("user_id")), row, T0)
        assert all(np.array_equal(got[k][0], batch[k][i]) for k in batch), i
    assert one.knows(1) and not one.knows(999)


def test_the_encoder_imports_no_torch():
    code = ("import sys, recsys.features.encoding, recsys.features.row_encoding; "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
