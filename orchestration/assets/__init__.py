"""The pipeline's assets, in the order data flows (``../shared/DESIGN.md``):

ingest:     incoming_batch → dataset                      [GX checks, blocking]
features:   features [GX checks, blocking] → feast_registry
training:   training_set → two_tower_model                [quality gate, blocking]
embeddings: catalogue_version (derived for new items) → item_embeddings (LanceDB) → user_candidates
serving:    online_features (Feast materialize) → promoted_model (the "current" switch)

State lives in the data folder (dataset, features, Feast, registry, LanceDB), not in
Dagster's IO managers: every asset reads what its upstream published there and publishes
atomically, so a killed run leaves the last good state, and the next run picks up from it.
Blocking checks fail → nothing downstream runs in that run: no training on bad data, no
promotion of a worse model. Rejected rows are never dropped silently: a failing batch is
moved whole to ``incoming/rejected/`` with its report, and counts go in the metadata.
"""

from orchestration.assets.catalogue import catalogue_version
from orchestration.assets.common import QUALITY_GATE, check_name
from orchestration.assets.embeddings import item_embeddings, user_candidates
from orchestration.assets.features import feast_registry, features
from orchestration.assets.ingest import dataset, incoming_batch
from orchestration.assets.serving import online_features, promoted_model
from orchestration.assets.training import training_set, two_tower_model

ASSETS = [incoming_batch, dataset, features, feast_registry, training_set, two_tower_model,
          catalogue_version, item_embeddings, user_candidates, online_features, promoted_model]  # fmt: skip
__all__ = ["ASSETS", "QUALITY_GATE", "check_name"]
