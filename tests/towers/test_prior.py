"""The popularity prior (TowerConfig.popularity_prior): weight x log1p(an item count) added to
the item's bias column outside training, so evaluation, the checkpoint, the index vectors
(LanceDB) and serving's one dot product all carry it; weight 0 is the model without it; and
towers.tuning.choose_prior picks the weight and the count on validation by re-scoring."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recsys.features.encoding import FeatureEncoder
from tests.towers.test_model import GENRES, rows
from towers.checkpoint import load_checkpoint, save_checkpoint
from towers.config import TowerConfig
from towers.data import EvalWindow, item_tensors, user_tensors
from towers.evaluate import EvalSplit, rank_metrics
from towers.model import index_vectors, query_vectors
from towers.train import TrainResult, build_model, tower_scores
from towers.tuning import choose_prior

CFG = TowerConfig(dim=8, hidden=16, id_dim=8, cat_dim=4, history=4, temperature=1.0)
COUNT_30D = np.log1p([0, 1, 2, 2, 3, 1])  # rows()'s item_count_30d, the missing one as 0


@pytest.fixture
def encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(rows(), GENRES, history=4)


def _items(model, encoder) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().item_tower(item_tensors(encoder, rows()))  # (6, d + 1)


def test_prior_adds_weighted_log_count_to_the_bias_outside_training(encoder):
    torch.manual_seed(0)
    model = build_model(CFG, encoder)
    plain = _items(model, encoder)
    model.set_config(replace(CFG, popularity_prior=0.5, popularity_feature="item_count_30d"))
    with_prior = _items(model, encoder)
    assert torch.equal(with_prior[:, :8], plain[:, :8])  # the vectors are untouched
    expected = plain[:, 8] + 0.5 * torch.tensor(COUNT_30D, dtype=torch.float32)
    assert torch.allclose(with_prior[:, 8], expected, atol=1e-5)
    # Training never sees it: the weight is chosen after training, on validation.
    model.train()
    batch = item_tensors(encoder, rows())
    torch.manual_seed(1)
    trained_path = model.item_tower(batch)
    model.set_config(CFG)
    torch.manual_seed(1)
    assert torch.equal(model.item_tower(batch), trained_path)


def test_weight_zero_is_the_model_without_the_prior(encoder):
    torch.manual_seed(0)
    model = build_model(CFG, encoder)
    plain = _items(model, encoder)
    model.set_config(replace(CFG, popularity_prior=0.0, popularity_feature="item_count_7d"))
    assert torch.equal(_items(model, encoder), plain)


def test_without_item_bias_the_prior_is_the_bias_column(encoder):
    cfg = replace(CFG, item_bias=False)
    model = build_model(cfg, encoder)
    assert _items(model, encoder).shape == (6, 8)
    model.set_config(replace(cfg, popularity_prior=2.0))
    v = _items(model, encoder)
    assert torch.allclose(v[:, 8], 2.0 * torch.tensor(COUNT_30D, dtype=torch.float32))


def test_only_log_scaled_counts_can_be_the_prior(encoder):
    model = build_model(replace(CFG, popularity_prior=1.0, popularity_feature="item_mean_rating"),
                        encoder)  # fmt: skip
    with pytest.raises(ValueError, match="popularity_feature 'item_mean_rating'"):
        _items(model, encoder)


def test_checkpoint_index_vectors_and_serving_query_carry_the_prior(encoder, tmp_path):
    """The saved model scores as evaluated, and the index vectors LanceDB stores
    ([v / T, bias + prior], towers.candidates.item_vectors) against serving's query [u, 1]
    (serving.loaded) give the same scores."""
    torch.manual_seed(0)
    cfg = replace(CFG, temperature=0.2, popularity_prior=1.5, popularity_feature="item_count_30d")
    model = build_model(cfg, encoder).eval()
    result = TrainResult(model=model, encoder=encoder, config=cfg, best_epoch=1, val_metrics={})
    loaded, enc, saved = load_checkpoint(save_checkpoint(result, tmp_path / "model.pt"))
    assert saved.popularity_prior == 1.5 and saved.popularity_feature == "item_count_30d"
    users, items = user_tensors(enc, rows()), item_tensors(enc, rows())
    evaluated = tower_scores(model, users, items)(np.arange(6))  # (6, 6)
    with torch.no_grad():
        u, v = loaded.user_tower(users), loaded.item_tower(items)
        served = (query_vectors(u) @ index_vectors(v, saved).T).numpy()
        loaded.set_config(replace(saved, popularity_prior=0.0))
        without = (query_vectors(u) @ index_vectors(loaded.item_tower(items), saved).T).numpy()
    np.testing.assert_allclose(served, evaluated, atol=1e-5)
    np.testing.assert_allclose(served - without, np.broadcast_to(1.5 * COUNT_30D, (6, 6)),
                               atol=1e-5)  # fmt: skip


def _window(encoder: FeatureEncoder) -> EvalWindow:
    """Five items; every user's next item is item 14, the most taken in the last 7 days but
    not over 30 days or all time (those favour item 10)."""
    items = rows(5).assign(
        item_id=[10, 11, 12, 13, 14], item_count_7d=[0, 1, 2, 3, 40],
        item_count_30d=[60, 1, 2, 3, 41], item_interaction_count=[900, 5, 6, 7, 50],
    )  # fmt: skip
    users = rows(6).assign(user_id=[1, 2, 3, 4, 5, 6])
    split = EvalSplit(
        item_ids=np.arange(10, 15), user_ids=np.arange(1, 7), truth=[np.array([4])] * 6,
        seen=sp.csr_matrix((6, 5), dtype=np.float32), warm=np.ones(6, bool),
        start=pd.Timestamp("2024-01-01", tz="UTC"),
    )  # fmt: skip
    return EvalWindow(split, user_tensors(encoder, users), item_tensors(encoder, items))


def test_choose_prior_picks_the_count_and_weight_that_help_on_validation(encoder):
    torch.manual_seed(0)
    cfg = replace(CFG, select_k=1)
    window = _window(encoder)
    result = TrainResult(model=build_model(cfg, encoder).eval(), encoder=encoder, config=cfg,
                         best_epoch=1, val_metrics={})  # fmt: skip
    chosen, tried = choose_prior(result, window, weights=(0.0, 0.01))
    assert tried["none"] < 1.0  # the untrained model alone misses item 14 for some users
    assert chosen.config.popularity_feature == "item_count_7d"
    assert chosen.config.popularity_prior > 0.01  # the grid was extended past its edge
    assert tried[f"{chosen.config.popularity_prior:g} log1p(item_count_7d)"] == 1.0
    assert max(v for k, v in tried.items() if "item_count_30d" in k) < 1.0
    # The chosen model scores the window as the choice did: the prior is in its config.
    scored = rank_metrics(tower_scores(chosen.model, window.users, window.items), window.split,
                          ks=(1,))  # fmt: skip
    assert scored["all"]["recall@1"] == 1.0
    assert chosen.model.cfg == chosen.config


def test_choose_prior_keeps_no_prior_when_it_does_not_help(encoder):
    """A prior that does not beat none on validation is not taken (here every setting ties)."""
    torch.manual_seed(0)
    cfg = replace(CFG, select_k=5)  # every item is in the top 5: every setting ties
    window = _window(encoder)
    result = TrainResult(model=build_model(cfg, encoder).eval(), encoder=encoder, config=cfg,
                         best_epoch=1, val_metrics={})  # fmt: skip
    chosen, tried = choose_prior(result, window)
    assert set(tried.values()) == {1.0}
    assert chosen.config.popularity_prior == 0.0


def test_the_item_table_vectors_carry_the_prior_of_the_counts_as_of(synthetic_build):
    """towers.candidates.item_vectors, what LanceDB stores for serving, on the real Feast
    store: the prior's column is β log1p(the item's 7-day count as of ``as_of``)."""
    from recsys.store import feature_store_for
    from towers.candidates import item_vectors
    from towers.data import features_as_of, load_source, tower_data

    settings, _ = synthetic_build
    source = load_source(settings, with_test=True)
    encoder = tower_data(source, ("train",), CFG.history).encoder
    store, as_of = feature_store_for(settings), settings.as_of
    torch.manual_seed(0)
    model = build_model(CFG, encoder).eval()
    plain = item_vectors(model, encoder, store, source.item_ids, as_of)
    model.set_config(replace(CFG, popularity_prior=3.0, popularity_feature="item_count_7d"))
    carried = item_vectors(model, encoder, store, source.item_ids, as_of)
    counts = features_as_of(store, "item_tower_v1", "item_id", source.item_ids, as_of)
    expected = 3.0 * np.log1p(counts["item_count_7d"].astype("float64").fillna(0).to_numpy())
    assert expected.std() > 0  # the counts differ between items
    np.testing.assert_allclose(carried[:, :-1], plain[:, :-1])
    np.testing.assert_allclose(carried[:, -1] - plain[:, -1], expected, rtol=1e-4, atol=1e-4)


def test_choose_prior_scores_a_block_of_users_at_a_time(encoder, monkeypatch):
    """Validation is scored in blocks sized to the catalogue (towers.evaluate.user_block), never
    as one users x items matrix: with room for one user's scores a block, every score_fn call
    gets one user, and the choice and its recalls are those of a single block."""
    import towers.evaluate as evaluate

    cfg = replace(CFG, select_k=1)
    window = _window(encoder)

    def chosen_prior():
        torch.manual_seed(0)
        model = build_model(cfg, encoder).eval()
        result = TrainResult(model=model, encoder=encoder, config=cfg, best_epoch=1,
                             val_metrics={})  # fmt: skip
        return choose_prior(result, window, weights=(0.0, 0.01))

    whole, whole_tried = chosen_prior()
    blocks: list[int] = []
    per_user_metrics = evaluate.per_user_metrics

    def counted(scores, split, *args, **kwargs):
        def score_fn(r):
            blocks.append(len(r))
            return scores(r)

        return per_user_metrics(score_fn, split, *args, **kwargs)

    monkeypatch.setattr(evaluate, "BLOCK_CELLS", 5)  # one row of the 5 items' scores
    monkeypatch.setattr(evaluate, "per_user_metrics", counted)
    blocked, blocked_tried = chosen_prior()
    assert blocks and set(blocks) == {1}
    assert len(blocks) == 6 * len(blocked_tried)  # 6 users, one call each, per setting
    assert blocked_tried == whole_tried
    assert blocked.config == whole.config
