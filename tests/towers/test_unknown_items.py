"""Items the model never saw (new items) levelled with the known items:
`towers.model.unknown_item_bias` and `towers.train.tower_scores`, which applies the model's
``unknown_item_bias``."""

from __future__ import annotations

import pytest
import torch

from towers.config import TowerConfig
from towers.model import unknown_item_bias

CFG = TowerConfig(dim=2)


def test_unknown_items_take_the_quantile_of_the_known_items_bias_and_nothing_else_moves():
    items = torch.tensor([[0.1, 0.2, 1.0], [0.3, 0.4, 3.0], [0.5, 0.6, 5.0], [0.7, 0.8, -9.0],
                          [0.9, 1.0, -8.0]])  # fmt: skip
    unknown = torch.tensor([False, False, False, True, True])
    out = unknown_item_bias(items, unknown, 0.5, CFG)
    assert out[3:, 2].tolist() == [3.0, 3.0]  # the known items' median, not -9 and -8
    assert torch.equal(out[:3], items[:3]) and torch.equal(out[:, :2], items[:, :2])
    assert unknown_item_bias(items, unknown, 1.0, CFG)[3, 2] == 5.0
    assert torch.equal(items[3:, 2], torch.tensor([-9.0, -8.0]))  # the input is not changed


def test_with_a_mean_query_the_median_unknown_item_scores_as_the_quantile_for_the_average_user():
    items = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 3.0], [1.0, 0.0, 5.0],  # known
                          [0.0, 1.0, -9.0], [0.6, 0.8, -8.0], [0.8, 0.6, -7.0]])  # fmt: skip
    unknown = torch.tensor([False, False, False, True, True, True])
    query = torch.tensor([2.0, 0.5])  # the average user leans on the known items' direction
    out = unknown_item_bias(items, unknown, 0.5, CFG, query)
    # One bias for the unknown items: their order for any user is their vectors' order.
    assert out[3:, 2].tolist() == pytest.approx([3.4, 3.4, 3.4])
    average = out[:, :2] @ query + out[:, 2]  # (6,) each item's score for the average user
    assert average[3:].tolist() == pytest.approx([3.9, 5.0, 5.3])  # median: the known 2 + 3
    assert torch.equal(out[:3], items[:3]) and torch.equal(out[:, :2], items[:, :2])
    # The median bias alone (3.0) ranked them below the median known item for that user.
    assert (unknown_item_bias(items, unknown, 0.5, CFG)[3:, :2] @ query + 3.0 < 5.0).all()
    # A user leaning towards the first unknown item's direction more than the average user
    # does ranks it above every known item; one leaning less, below them.
    assert (out[:, :2] @ torch.tensor([0.0, 3.0]) + out[:, 2]).argmax() == 3
    assert (out[:, :2] @ torch.tensor([3.0, 0.0]) + out[:, 2]).argmax() == 2


def test_nothing_to_do_without_a_bias_column_or_without_known_items():
    items = torch.rand(4, 3)
    assert torch.equal(unknown_item_bias(items[:, :2], torch.ones(4, dtype=torch.bool), 0.5,
                                         CFG), items[:, :2])  # fmt: skip
    assert torch.equal(unknown_item_bias(items, torch.ones(4, dtype=torch.bool), 0.5, CFG), items)
    assert torch.equal(unknown_item_bias(items, torch.zeros(4, dtype=torch.bool), 0.5, CFG), items)


def test_a_derived_versions_new_items_take_the_bias_of_its_parents_items_never_seen(tmp_path):
    """A catalogue refresh (evaluation.catalogue.derived_vectors) passes the parent's whole
    table: new items join the level of the items its model never saw there, so that those
    copied vectors keep their bias and all share one level."""
    import numpy as np

    from evaluation.version_outputs import with_unknown_item_bias
    from recsys.features.encoding import FeatureEncoder
    from recsys.registry import ModelRegistry
    from tests.towers.test_model import GENRES, rows
    from towers.checkpoint import save_checkpoint
    from towers.train import TrainResult, build_model

    encoder = FeatureEncoder.fit(rows(), GENRES, history=4)  # items 10, 13, 14 known
    cfg = TowerConfig(dim=2, hidden=4, id_dim=2, cat_dim=2, history=4)
    result = TrainResult(build_model(cfg, encoder).eval(), encoder, cfg, 1, {})
    reg = ModelRegistry(tmp_path / "models")
    version = reg.new_version("a" * 64)
    with reg.build(version, "run", {"fingerprint": "a" * 64}) as folder:
        save_checkpoint(result, folder / "checkpoint.pt")
    parent_ids = np.array([10, 13, 14, 500, 501])  # 500 and 501: never seen, at bias 2.5
    parent = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 5.0], [0.5, 0.5, 2.5],
                       [0.2, 0.1, 2.5]], dtype=np.float32)  # fmt: skip
    fresh = np.array([[0.3, 0.3, -7.0], [0.9, 0.1, 4.0]], dtype=np.float32)  # 600; 13 changed
    out = with_unknown_item_bias(reg, version, np.array([600, 13]), fresh, None, np.array([]),
                                 None, (parent_ids, parent))  # fmt: skip
    assert out[0].tolist() == pytest.approx([0.3, 0.3, 2.5])  # the parent's level
    assert out[1].tolist() == pytest.approx(fresh[1].tolist())  # a known item: as computed
