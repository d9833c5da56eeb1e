"""The user tower as served (``serving.tower``): the pipeline's ONNX graph computes the
checkpoint's tower on any batch, and a version whose graph is missing, unreadable or
exported from other weights is served by PyTorch instead, never by the wrong graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.features.encoding import HISTORY_FEATURES, USER_TOWER_FILE, FeatureEncoder
from recsys.registry import ModelRegistry
from serving.tower import ONNX_ATOL, OnnxTower, load_user_tower
from tests.serving.conftest import Pipeline
from towers.checkpoint import load_checkpoint
from towers.export import export_user_tower
from towers.model import TwoTower


@pytest.fixture(scope="module")
def version(pipeline: Pipeline) -> tuple[Path, TwoTower, FeatureEncoder]:
    folder = ModelRegistry(pipeline.data / "models").path(pipeline.version)
    model, encoder, _ = load_checkpoint(folder / "checkpoint.pt")
    return folder, model, encoder


def random_batch(model: TwoTower, encoder: FeatureEncoder, rows: int, seed: int) -> dict:
    """Valid inputs of every kind: known and unknown users and categories, missing
    numerics, histories from empty to full with padding and unknown items."""
    rng = np.random.default_rng(seed)
    tower = model.user_tower
    history = rng.integers(0, encoder.n_items, (rows, encoder.history))
    lengths = rng.integers(0, encoder.history + 1, rows)
    history[np.arange(encoder.history)[None, :] >= lengths[:, None]] = 1  # PAD
    feats = rng.normal(size=(rows, encoder.history, HISTORY_FEATURES))
    feats[..., [1, 3]] = rng.integers(0, 2, (rows, encoder.history, 2))  # missing flags
    feats[history == 1] = 0.0  # padding positions carry no features
    nums = rng.normal(size=(rows, 4))
    nums[:, 2:] = rng.integers(0, 2, (rows, 2))  # the missing-value flags
    return {
        "user": rng.integers(0, tower.user.num_embeddings, rows),
        "cats": np.stack([rng.integers(0, e.num_embeddings, rows) for e in tower.cats], 1),
        "nums": nums.astype(np.float32),
        "affinity": rng.dirichlet(np.ones(len(encoder.genres)), rows).astype(np.float32),
        "history": history,
        "history_feats": feats.astype(np.float32),
    }


def examples(model: TwoTower, encoder: FeatureEncoder) -> list[dict]:
    return [random_batch(model, encoder, 1, seed) for seed in range(3)]


def test_exported_graph_computes_the_checkpoints_tower_on_any_batch(version) -> None:
    folder, model, encoder = version
    graph = OnnxTower(folder / USER_TOWER_FILE)  # written by the pipeline's training step
    for rows, seed in ((1, 0), (7, 1), (512, 2)):  # the batch size is not fixed
        batch = random_batch(model, encoder, rows, seed)
        with torch.no_grad():
            want = model.user_tower({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        got = graph(batch)
        assert got.shape == want.shape == (rows, model.cfg.dim)
        np.testing.assert_allclose(got, want, rtol=0, atol=ONNX_ATOL)


def test_the_graph_is_used_only_when_it_computes_the_checkpoints_tower(
    version, tmp_path: Path
) -> None:
    folder, model, encoder = version
    checks = examples(model, encoder)
    good = (folder / USER_TOWER_FILE).read_bytes()
    graph = tmp_path / USER_TOWER_FILE

    assert load_user_tower(model.user_tower, tmp_path, checks)[1] == "torchscript"  # missing
    graph.write_bytes(good)
    fn, kind = load_user_tower(model.user_tower, tmp_path, checks)
    assert kind == "onnx" and isinstance(fn, OnnxTower)
    for broken in (b"", b"not an onnx graph", good[: len(good) // 2]):
        graph.write_bytes(broken)
        assert load_user_tower(model.user_tower, tmp_path, checks)[1] == "torchscript"

    # A readable graph of other weights (another version's, a stale file): not served.
    other = load_checkpoint(folder / "checkpoint.pt")[0]
    with torch.no_grad():
        other.user_tower.mlp[0].weight.mul_(1.01)
    export_user_tower(other.user_tower, encoder, tmp_path)
    fn, kind = load_user_tower(model.user_tower, tmp_path, checks)
    assert kind == "torchscript"
    with torch.no_grad():
        want = model.user_tower({k: torch.from_numpy(v) for k, v in checks[0].items()}).numpy()
    assert np.array_equal(fn(checks[0]), want)  # traced: the module's exact outputs


def test_a_version_without_a_graph_is_served_by_pytorch(pipeline: Pipeline, tmp_path: Path) -> None:
    from recsys.settings import Paths
    from serving.load import load_version

    data = tmp_path / "data"
    shutil.copytree(pipeline.data, data, symlinks=True)
    folder = ModelRegistry(data / "models").path(pipeline.version)
    with_graph = load_version(Paths(data), pipeline.version)
    (folder / USER_TOWER_FILE).unlink()
    without = load_version(Paths(data), pipeline.version)
    assert (with_graph.tower_kind, without.tower_kind) == ("onnx", "torchscript")
    row = {"age_bucket": "25-34", "recent_item_ids": with_graph.index.item_ids[:5].tolist()}
    fast, slow = (
        with_graph.recommend(None, row, 20, np.empty(0, np.int64)),
        without.recommend(None, row, 20, np.empty(0, np.int64)),
    )
    assert [i["item_id"] for i in fast] == [i["item_id"] for i in slow]
    np.testing.assert_allclose([i["score"] for i in fast], [i["score"] for i in slow], atol=1e-4)
