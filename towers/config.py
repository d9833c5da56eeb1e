"""Configuration of the two-tower model and its training, with a comment for every default.

The checkpoint stores this config, so a model can be rebuilt from the file alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Loss = Literal["softmax", "bce", "triplet"]
HistoryEncoder = Literal["mean", "gru", "attention"]


@dataclass
class TowerConfig:
    # Output dimension of both towers (the space items are searched in).
    dim: int = 64
    # Width of each tower's hidden layer.
    hidden: int = 256
    # Size of the id embeddings (user id, item id) and of the categorical embeddings.
    id_dim: int = 64
    cat_dim: int = 16
    # Standard deviation of the initial id and category embeddings. Small, so that at first
    # the towers lean on the features and the ids grow only as far as the data pushes them
    # (torch's default N(0, 1) would start every id as a large random vector).
    init_std: float = 0.05
    # Probability of replacing a user's id by the out-of-vocabulary slot during training, so
    # the tower also learns a features-only embedding for users it has never seen.
    user_id_dropout: float = 0.3
    # Same for items: new items get a content-and-popularity-only embedding.
    item_id_dropout: float = 0.1
    # Dropout inside the MLPs.
    dropout: float = 0.1
    # How many recent items the user tower pools (the feature keeps up to this many).
    history: int = 20
    # How the user tower reads those items (towers.model.HistoryBlock). "mean": the average
    # of their id embeddings (order, times and ratings unused). "gru": item + position +
    # rating/time features through a 1-layer GRU, oldest to newest; the final state.
    # "attention": the same inputs through one self-attention layer; the newest position's
    # output. Chosen on validation (benchmarks/ablation_history.py, MovieLens-100K, three
    # cuts, two seeds; README "User tower history encoder"): validation recall@20 averaged
    # over the cuts 0.296 (gru) and 0.296 (attention) against 0.282 (mean), both sequence
    # encoders ahead of mean on every cut; gru the more consistent of the two.
    history_encoder: HistoryEncoder = "gru"
    # Whether the sequence encoders see each item's rating, and its time before the row.
    # Without the times validation recall@20 fell back to mean pooling's (0.283); without
    # the ratings it was 0.298 against 0.296 with them (within the noise, 160-200 users per
    # cut): ratings are off by default, as validation chose, and the input stays wired.
    history_ratings: bool = False
    history_times: bool = True
    # Width of the sequence encoders (their inputs are projected to it). The block runs on
    # every position of every row (20K per 1,024-row batch), so this sets its cost.
    history_dim: int = 32
    # Heads of the attention encoder (must divide history_dim), and its dropout.
    attention_heads: int = 2
    history_dropout: float = 0.0
    # Scores are dot products of L2-normalised vectors divided by this temperature ...
    temperature: float = 0.05
    # ... plus, when on, a scalar bias per item from the item tower (its "prior": how likely
    # anyone takes it now, from popularity and trend features), so the direction of the
    # vectors is free to encode taste. Retrieval stays one dot product: the item's index
    # vector is [v / temperature, bias] and the user's query is [u, 1].
    item_bias: bool = True
    # A popularity prior added to the item's bias when scoring (not in training):
    # + popularity_prior * log1p(the item's count in `popularity_feature`, as of the scoring
    # time), so the score stays one dot product ([u, 1] against [v / T, bias + prior]). On
    # MovieLens-100K recent popularity is the baseline to beat and the trend is what the
    # tower underweights; the weight and the count (7 days, 30 days, all time) are chosen per
    # run on validation by re-scoring (towers.tuning.choose_prior); 0 leaves the model as
    # trained. Needs no retraining, so it is set on a trained model.
    popularity_prior: float = 0.0
    popularity_feature: str = "item_count_30d"
    # The bias, at scoring time, of the items the model never saw (new items: no events, the
    # unknown-id slot): one bias for all, at which, for the mean user vector, the median of
    # them scores as this quantile of the known items (`towers.model.unknown_item_bias`).
    # None keeps the model's own, which with the prior above ranks every item without events
    # below every item with some, so a new item reached no one. Chosen on validation
    # (benchmarks/ablation_new_items.py; README, "A living catalogue"): new items ranked by
    # similarity alone were found more often, and the users' recall was unchanged.
    unknown_item_bias: float | None = 0.5
    # "softmax": in-batch sampled softmax (optionally with mixed negatives);
    # "bce": binary cross-entropy against sampled negatives; "triplet": margin loss.
    loss: Loss = "softmax"
    # Subtract log(sampling probability) from in-batch logits (Yi et al., RecSys 2019).
    logq: bool = True
    # Extra negatives per batch drawn uniformly from the catalogue (Yang et al., WWW 2020);
    # also the negatives of the bce and triplet losses.
    mixed_negatives: int = 256
    # Where those uniform negatives take their features from. "rows": a uniformly drawn
    # item's features at the time of one of its own training rows, so negatives and
    # positives carry features of the same kind. "catalogue": every item's features at one
    # time (the first evaluation window's start), which trains a shortcut: a negative is told
    # apart from a positive by its snapshot features (counts from after the row's time), and
    # at evaluation, where every item carries snapshot features, all items look like
    # negatives. On MovieLens-100K's window after the 90th percentile, the refit on train +
    # validation scored warm test recall@20 0.176 with catalogue negatives, 0.236 without any.
    negatives_from: Literal["rows", "catalogue"] = "rows"
    # Recency weight of each training row in the loss: halved every this many days before
    # the newest training row (the weeks just before the evaluated window resemble it most);
    # 0 weighs every row alike. On MovieLens-100K's three validation cuts (README, "User
    # tower history encoder") 30 days raised validation recall@20 on every cut, all and warm
    # users (mean over cuts 0.311 against 0.298); but on the planted-factor synthetic data,
    # which does not drift, it throws data away (tests/towers/test_train.py's planted-users
    # check fails with it). Off by default: a per-dataset choice on validation.
    recency_half_life_days: float = 0.0
    # Share of the training rows, drawn afresh every epoch, whose user input is cut back to
    # what a new user's would be after their first few events: the history cut to its k
    # newest items, k uniform in 0..history_crop_max, the activity numerics (count, mean
    # rating, genre shares) recomputed from those k items, and no user id, as a cold-start
    # request gives them. Without it the tower learns the profile-only and few-events paths
    # only from users' first events (3.6% of rows have no history, 18.6% at most 5 items,
    # synthetic cut 1), and from the id-dropout, which keeps the whole history. Off: on
    # validation it trades warm users for new ones (synthetic 100K, 0.2: new after 5 events
    # +0.017, warm -0.007; MovieLens-100K: new after 5 level, warm -0.013; README, "Three more
    # settings tried"), and the choice is made on all users, where it loses on both.
    history_crop: float = 0.0
    history_crop_max: int = 5
    # Margin of the triplet loss, in cosine units.
    margin: float = 0.2
    batch_size: int = 1024
    lr: float = 2e-3
    # Learning rate of the id and category embedding tables. Higher than `lr`: Adam moves a
    # parameter by about lr per step it gets a gradient, and a user's row gets one only in
    # the few batches that hold that user, so at `lr` ids would barely leave their start.
    embedding_lr: float = 1e-2
    weight_decay: float = 1e-5
    # Early stopping: at most this many epochs, stop after `patience` without improvement
    # of validation recall@`select_k`.
    epochs: int = 30
    patience: int = 3
    select_k: int = 20
    seed: int = 0
    # Torch intra-op threads; 0 means OMP_NUM_THREADS if set, else half the cores the
    # process may run on (at least one). At 1M synthetic on 2 quiet cores, one epoch of
    # 1,024-row batches ran at 25-27K examples/s on one thread and 25-30K on two, for 20-35%
    # more CPU time: the step's operations are too small to split well, so the second core is
    # left to DuckDB, Dagster or a server. OpenMP's threads wait passively (`recsys` sets that
    # before torch loads), so a second thread no longer collapses when a core is shared
    # (spinning: 270-670 ms a step with other jobs running, against 45-95 ms passive).
    # Measured by benchmarks/bench_training.py; figures in the README.
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TowerConfig:
        return cls(**values)
