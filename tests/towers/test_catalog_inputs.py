"""A feature added to the catalogue reaches the towers with no other edit: the model built
from an encoder of an extended catalogue has the wider inputs, trains, and exports to an
ONNX graph that takes them and computes the module."""

from __future__ import annotations

import numpy as np
import torch

from recsys.features.encoding import FeatureEncoder
from tests.features.test_encoding import extended, extended_rows
from tests.towers.test_model import GENRES
from towers.config import TowerConfig
from towers.data import TowerData, item_tensors, tensors, user_tensors
from towers.export import user_tower_onnx
from towers.train import Training, build_model

CFG = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4, history_dim=8,
                  mixed_negatives=4, epochs=1, threads=1)  # fmt: skip


def test_an_extended_catalogue_trains_and_exports_with_wider_inputs():
    import onnxruntime as ort

    frame = extended_rows()
    encoder = FeatureEncoder.fit(frame, GENRES, history=4, catalog=extended())
    plain = build_model(CFG, FeatureEncoder.fit(frame, GENRES, history=4))
    items = item_tensors(encoder, frame)
    data = TowerData(encoder=encoder, train_users=user_tensors(encoder, frame),
                     train_items=items, log_q=torch.zeros(encoder.n_items), catalogue=items,
                     val=None)  # fmt: skip
    run = Training(CFG, data, progress=False, epochs=1)
    wide, narrow = run.model.user_tower, plain.user_tower
    # One more category embedding (cat_dim) and one more numeric (value + missing flag).
    assert len(wide.cats) == len(narrow.cats) + 1
    assert wide.mlp[0].in_features == narrow.mlp[0].in_features + CFG.cat_dim + 2
    before = [p.detach().clone() for p in run.model.parameters()]
    entry = run.epoch()
    assert np.isfinite(entry["loss"]) and run.done
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))

    tower = run.result().model.user_tower
    graph = ort.InferenceSession(user_tower_onnx(tower, encoder))
    shapes = {i.name: i.shape for i in graph.get_inputs()}
    assert shapes["cats"][1] == 5 and shapes["nums"][1] == 6
    arrays = encoder.encode_users(frame)
    got = graph.run(None, arrays)[0]
    with torch.no_grad():
        want = tower(tensors(arrays)).numpy()
    assert got.shape == (len(frame), CFG.dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
