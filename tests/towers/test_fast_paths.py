"""The training step's fast paths compute what the plain formulas compute.

The softmax loss folds the item bias and logQ into one matrix product, the user tower pools
its history with one bag kernel, AdamW runs fused: each is checked against the formula it
replaced (values and gradients), and a short training run on the tests' synthetic build
against the losses and validation metrics the previous implementation produced. The thread
settings: half the cores by default (or OMP_NUM_THREADS), OpenMP threads waiting passively.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from recsys.features.catalog import CATALOG
from recsys.features.encoding import HISTORY_FEATURES, PAD, FeatureEncoder
from towers.config import TowerConfig
from towers.cpu import keep_large_blocks, set_threads
from towers.data import load_source, tower_data
from towers.losses import accidental_hits, softmax_loss
from towers.model import Dropout, UserTower, logits
from towers.train import train


def reference_softmax_loss(users, items, item_ids, log_q, cfg, extra, extra_ids, extra_lq):
    """The in-batch softmax as written before: logits, minus log q, accidental hits masked."""
    candidates, ids, lq = items, item_ids, log_q
    if extra is not None:
        candidates, ids = torch.cat([items, extra]), torch.cat([item_ids, extra_ids])
        lq = torch.cat([log_q, extra_lq]) if log_q is not None else None
    scores = logits(users, candidates, cfg)
    if cfg.logq and lq is not None:
        scores = scores - lq.unsqueeze(0)
    rows = torch.arange(len(users))
    same = ids.unsqueeze(0) == item_ids.unsqueeze(1)
    same[rows, rows] = False
    return F.cross_entropy(scores.masked_fill(same, float("-inf")), rows)


@pytest.mark.parametrize("logq", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("negatives", [0, 7])
def test_softmax_loss_equals_the_plain_formula(logq, bias, negatives):
    cfg = TowerConfig(dim=8, temperature=0.07, logq=logq)
    gen = torch.Generator().manual_seed(0)
    width = 9 if bias else 8
    users = F.normalize(torch.randn(16, 8, generator=gen), dim=-1).requires_grad_()
    items = torch.randn(16, width, generator=gen).requires_grad_()
    item_ids = torch.randint(2, 9, (16,), generator=gen)  # 16 rows, 7 ids: duplicates
    log_q = torch.randn(16, generator=gen)
    extra = extra_ids = extra_lq = None
    if negatives:
        extra = torch.randn(negatives, width, generator=gen).requires_grad_()
        extra_ids = torch.randint(2, 12, (negatives,), generator=gen)
        extra_lq = torch.full((negatives,), -1.5)
    inputs = [t for t in (users, items, extra) if t is not None]
    args = (users, items, item_ids, log_q, cfg, extra, extra_ids, extra_lq)
    fast, slow = softmax_loss(*args), reference_softmax_loss(*args)
    assert torch.isfinite(fast) and fast.item() == pytest.approx(slow.item(), rel=1e-6)
    for a, b in zip(
        torch.autograd.grad(fast, inputs), torch.autograd.grad(slow, inputs), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def reference_pooling(tower: UserTower, history: torch.Tensor) -> torch.Tensor:
    """Mean of the history's embeddings over the non-padding slots (zeros if none)."""
    mask = (history != PAD).unsqueeze(-1).float()
    return (tower.history.item(history) * mask).sum(1) / mask.sum(1).clamp(min=1)


def test_history_pooling_equals_the_masked_mean():
    """The tower's pooled history (captured at the MLP's input) and the item table's
    gradient through it equal the masked mean's, for full, partial, empty histories, the
    unknown-item slot and repeated items."""
    cfg = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=5, dropout=0.0,
                      history_encoder="mean")  # fmt: skip
    item = torch.nn.Embedding(30, 8, padding_idx=PAD)
    tower = UserTower(cfg, n_users=5, cat_sizes=[3, 3, 3, 3], n_genres=2, n_nums=4,
                      item_embedding=item).eval()  # fmt: skip
    history = torch.tensor(
        [
            [5, 6, 7, 8, 9],
            [5, PAD, PAD, PAD, PAD],
            [PAD] * 5,
            [0, 3, PAD, PAD, PAD],
            [4, 4, 4, 9, PAD],
        ]  # fmt: skip
    )
    batch = {"user": torch.arange(5), "cats": torch.zeros(5, 4, dtype=torch.int64),
             "nums": torch.zeros(5, 4), "affinity": torch.zeros(5, 2), "history": history,
             "history_feats": torch.randn(5, 5, HISTORY_FEATURES)}  # fmt: skip
    seen: list[torch.Tensor] = []
    hook = tower.mlp[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    tower(batch)
    hook.remove()
    pooled = seen[0][:, cfg.id_dim : 2 * cfg.id_dim]  # right after the user id's embedding
    expected = reference_pooling(tower, history)
    assert torch.allclose(pooled, expected, atol=1e-7)
    assert pooled[2].abs().sum() == 0  # an empty history pools to zeros
    weights = torch.randn(5, 8)
    (grad_fast,) = torch.autograd.grad((pooled * weights).sum(), item.weight)
    (grad_slow,) = torch.autograd.grad((expected * weights).sum(), item.weight)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-7) and grad_fast[PAD].abs().sum() == 0


# Per epoch: training loss, validation recall@20 and NDCG@20 of the run below, produced by
# the implementation before the fast paths (unfused AdamW, loss and pooling; one thread), as
# re-run without MLP dropout by the code at fdf21f5 (nn.Dropout; the mask is drawn
# differently now, see towers.model.Dropout); and the same for the GRU history encoder.
PREVIOUS = {
    "mean": [
        (5.810383100789587, 0.24345500246855428, 0.13826985580333198),
        (4.934466203327515, 0.267780724458159, 0.14642836080660346),
        (4.475652817242766, 0.22984593277297338, 0.12757916694665247),
    ],
    "gru": [
        (5.8328099931616135, 0.2665192749261454, 0.13692429342756193),
        (4.921866224329999, 0.27087635024918355, 0.14874107150637253),
        (4.439630452658099, 0.2514900601726949, 0.1408260020627641),
    ],
}


@pytest.mark.parametrize("encoder", sorted(PREVIOUS))
def test_short_run_matches_the_previous_implementation(synthetic_build, encoder):
    settings, _ = synthetic_build
    # The inputs the numbers were recorded on: the user tower before zip_region.
    source = load_source(settings, with_test=False)
    data = tower_data(source, ("train",), 20, catalog=CATALOG.retiring(["zip_region"]))
    cfg = TowerConfig(dim=32, hidden=64, id_dim=32, epochs=3, patience=3, batch_size=256,
                      lr=1e-3, history_encoder=encoder, negatives_from="catalogue",
                      dropout=0.0)  # fmt: skip
    history = train(cfg, data, progress=False).history
    assert len(history) == len(PREVIOUS[encoder])
    for entry, (loss, recall, ndcg) in zip(history, PREVIOUS[encoder], strict=True):
        assert entry["loss"] == pytest.approx(loss, rel=1e-5)
        assert entry["val"]["recall@20"] == pytest.approx(recall, abs=2e-3)
        assert entry["val"]["ndcg@20"] == pytest.approx(ndcg, abs=2e-3)


def test_dropout_zeroes_a_share_p_and_keeps_the_mean():
    """towers.model.Dropout is inverted dropout: in training a share p of the values is
    zeroed and the rest scaled by 1 / (1 - p), gradients through the same mask; in eval mode
    (and at p = 0) it is the identity."""
    torch.manual_seed(0)
    layer, x = Dropout(0.25), torch.ones(400, 500, requires_grad=True)
    out = layer(x)
    zeroed = (out == 0).float().mean().item()
    assert zeroed == pytest.approx(0.25, abs=0.005)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.75))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, out.detach())  # d out / d x is the scaled mask
    assert layer.eval()(x) is x and Dropout(0.0)(x) is x
    with pytest.raises(ValueError, match="dropout must be in"):
        Dropout(1.0)


def test_threads_default_to_half_the_cores_and_wait_passively(monkeypatch):
    cores, before = len(os.sched_getaffinity(0)), torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert set_threads(TowerConfig()) == max(1, cores // 2) == torch.get_num_threads()
        assert set_threads(replace(TowerConfig(), threads=1)) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert set_threads(TowerConfig()) == 3 == torch.get_num_threads()
        assert set_threads(replace(TowerConfig(), threads=1)) == 1  # the config wins
        monkeypatch.setenv("OMP_NUM_THREADS", "many")
        with pytest.raises(ValueError, match="OMP_NUM_THREADS='many'"):
            set_threads(TowerConfig())
    finally:
        torch.set_num_threads(before)
    code = "import towers, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "PASSIVE", got.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # an explicit setting wins
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "ACTIVE", got.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_keeps_large_blocks():
    """The allocator takes the settings that spare each step its page faults."""
    assert keep_large_blocks() is True


def test_accidental_hits_are_every_off_diagonal_pair_of_equal_items():
    gen = torch.Generator().manual_seed(3)
    item_ids = torch.randint(0, 9, (40,), generator=gen)
    ids = torch.cat([item_ids, torch.randint(0, 12, (25,), generator=gen)])
    rows, cols = accidental_hits(item_ids, ids)
    same = ids.unsqueeze(0) == item_ids.unsqueeze(1)  # (40, 65)
    same[torch.arange(40), torch.arange(40)] = False
    found = torch.zeros_like(same)
    found[rows, cols] = True
    assert len(rows) == int(same.sum()) > 0 and torch.equal(found, same)


def test_encoder_fits_the_same_on_arrow_as_on_pandas(synthetic_build):
    """tower_data fits on the Arrow table (list columns never become Python objects)."""
    import json

    import pyarrow.parquet as pq

    settings, _ = synthetic_build
    table = pq.read_table(settings.paths.training / "training_set.parquet")
    genres = json.loads((settings.paths.features / "manifest.json").read_text())["genres"]
    on_arrow = FeatureEncoder.fit(table, genres, 20)
    assert on_arrow.to_dict() == FeatureEncoder.fit(table.to_pandas(), genres, 20).to_dict()
