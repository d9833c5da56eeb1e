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
