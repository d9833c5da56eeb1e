"""The catalogue refresh (evaluation.catalogue, job ``catalogue_refresh``): new and changed
items reach a running server through a version derived from the current one, same weights.

Tier 1: the catalogue comparison and the refusals (a fallback current version, a run that
built its own version), and the sensor's choice of job. Tier 3: the whole graph on 20K
synthetic events, a real server, then a batch dropped in ``incoming/``: three new items
(the genres most rated) with their first takers' events, and a new version of one item; and
the ``catalogue_refresh`` job: no version when nothing changed; else a derived version,
promoted, that the server switches to and that can recommend a new item."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.catalogue import catalogue_diff, plan_refresh
from recsys.registry import EMBEDDED, GATED, PROMOTED, RETIRED, ModelRegistry
from tests.serving.conftest import FAST, Server, start_server, stop_server

NEW_IDS = (900_001, 900_002, 900_003)


def items_table(ids: list[int], titles: list[str], genres: list[list[str]]) -> pa.Table:
    return pa.table({"item_id": pa.array(ids, pa.int64()), "title": titles,
                     "genres": pa.array(genres, pa.list_(pa.string())),
                     "release_year": pa.array([1990] * len(ids), pa.int64())})  # fmt: skip


def test_diff_finds_new_and_changed_items_only():
    served = items_table([1, 2, 3], ["a", "b", "c"], [["Drama"], ["Comedy"], []])
    same = catalogue_diff(served, served)
    assert same.empty and same.items == 3
    now = items_table([1, 2, 3, 7], ["a", "b2", "c", "d"], [["Drama"], ["Comedy"], [], ["War"]])
    diff = catalogue_diff(now, served)
    assert diff.new.tolist() == [7] and diff.changed.tolist() == [2]
    assert diff.refreshed.tolist() == [2, 7] and not diff.empty
    genres = items_table([1, 2, 3], ["a", "b", "c"], [["Drama", "War"], ["Comedy"], []])
    assert catalogue_diff(genres, served).changed.tolist() == [1]


def promoted_fallback(reg: ModelRegistry) -> str:
    """A promoted fallback version (recsys.fallback's version.json), files aside."""
    version, run = reg.new_version("f" * 64), "fallback-run"
    with reg.build(version, run, {"fingerprint": "f" * 64, "kind": "fallback",
                                  "baseline": "popularity"}):  # fmt: skip
        pass
    reg.transition(version, GATED, run, "fallback")
    reg.transition(version, EMBEDDED, run, "scores written")
    reg.promote(version, run, "fallback")
    return version


def test_no_derived_version_from_a_fallback_or_by_the_run_that_trained(tmp_path: Path):
    reg = ModelRegistry(tmp_path / "models")
    items = items_table([1], ["a"], [["Drama"]])
    assert plan_refresh(reg, "r", tmp_path / "lancedb", items).reason == (
        "no current version to derive from"
    )
    version = promoted_fallback(reg)
    plan = plan_refresh(reg, "another-run", tmp_path / "lancedb", items)
    assert not plan.derive and plan.parent is None
    assert plan.reason.startswith(f"current version {version} is a fallback baseline")
    assert "no item tower" in plan.reason
    built = plan_refresh(reg, "fallback-run", tmp_path / "lancedb", items)
    assert not built.derive and built.reason.startswith(f"this run built version {version}")
    assert reg.versions() == [version]


def test_the_catalogue_version_asset_says_why_it_derives_none_from_a_fallback(tmp_path: Path):
    from dagster import materialize

    from orchestration.assets import ASSETS
    from orchestration.resources import PipelineSettings, resources_for

    data = tmp_path / "data"
    reg = ModelRegistry(data / "models")
    version = promoted_fallback(reg)
    (data / "dataset").mkdir(parents=True)
    pq.write_table(items_table([1], ["a"], [["Drama"]]), data / "dataset" / "items.parquet")
    settings = PipelineSettings(data_dir=str(data))
    result = materialize(ASSETS, resources=resources_for(settings),
                         selection=["catalogue_version"])  # fmt: skip
    assert result.success
    (event,) = result.asset_materializations_for_node("catalogue_version")
    status = event.metadata["status"].value
    assert status.startswith(f"no version: current version {version} is a fallback baseline")
    assert reg.versions() == [version] and reg.current() == version


def test_the_sensor_runs_catalogue_refresh_for_users_or_items_and_feature_refresh_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from dagster import build_sensor_context

    from orchestration.definitions import incoming_batches

    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    incoming = tmp_path / "incoming"
    (incoming / "items").mkdir(parents=True)
    assert incoming_batches(build_sensor_context()).skip_message  # nothing pending
    pd.DataFrame({"user_id": [1]}).to_parquet(incoming / "events.parquet")
    assert incoming_batches(build_sensor_context()).job_name == "feature_refresh"
    items_table([5], ["e"], [[]]).to_pandas().to_parquet(incoming / "items" / "new.parquet")
    request = incoming_batches(build_sensor_context())
    assert request.job_name == "catalogue_refresh" and request.tags["batch_files"] == "2"


# --- the job, end to end -------------------------------------------------------------------
@dataclass
class Refreshed:
    data: Path
    parent: str
    derived: str
    user: int  # the user whose stored candidates rank a new item highest
    rank: int  # that item's rank there (0: first)
    changed: int  # the item whose genres changed
    unchanged_run: Any  # the job's result with the catalogue unchanged
    run: Any  # the job's result after the new items
    answer: tuple[int, Any]  # the server's GET /recommendations/{user}?k=100 after the switch
    readiness: dict[str, Any]  # its /readyz then


def run_job(data: Path, job: str, **overrides: Any) -> Any:
    from dagster import Definitions

    from orchestration.assets import ASSETS
    from orchestration.definitions import catalogue_refresh
    from orchestration.resources import PipelineSettings, resources_for

    settings = PipelineSettings(data_dir=str(data), **{**FAST, **overrides})
    defs = Definitions(assets=ASSETS, jobs=[catalogue_refresh], resources=resources_for(settings))
    return defs.resolve_job_def(job).execute_in_process(raise_on_error=False)


def drop_new_items(data: Path) -> int:
    """Drop a batch in ``data/incoming`` as a sender would: NEW_IDS in ``incoming/items/``
    (titled "New film <id>", the genre set most rated in the dataset, true from an hour
    before the dataset's last event), a new version of the last item (other genres), and in
    ``incoming/`` their first takers: each new item rated 5 by 8 users, a minute apart
    before the last event (as_of stays). Returns the changed item's id."""
    items = pd.read_parquet(data / "dataset" / "items.parquet")
    events = pd.read_parquet(data / "dataset" / "interactions.parquet")
    genres = items.genres.map(tuple).tolist()
    rated = pd.Series(genres, index=items.item_id).loc[events.item_id].value_counts().index
    last = events.event_timestamp.max()
    new = items.iloc[[0] * len(NEW_IDS)].copy()
    new["item_id"] = NEW_IDS
    new["title"] = [f"New film {i}" for i in NEW_IDS]
    new["genres"] = [list(rated[0])] * len(NEW_IDS)
    changed = items.iloc[[-1]].copy()
    changed["genres"] = [list(rated[0] if genres[-1] != rated[0] else rated[1])]
    versions = pd.concat([new, changed], ignore_index=True)
    versions["valid_from"] = last - pd.Timedelta(hours=1)
    (data / "incoming" / "items").mkdir(parents=True, exist_ok=True)
    versions.to_parquet(data / "incoming" / "items" / "new-films.parquet")
    # The last new item has no taker yet.
    takers = np.random.default_rng(0).choice(events.user_id.unique(), (len(NEW_IDS) - 1, 8), False)
    taken = pd.DataFrame({
        "user_id": takers.reshape(-1), "item_id": np.repeat(NEW_IDS[:-1], 8), "rating": 5.0,
        "event_timestamp": last - pd.to_timedelta(np.arange(1, takers.size + 1), "min"),
    })  # fmt: skip
    taken.astype(events.dtypes[taken.columns].to_dict()).to_parquet(
        data / "incoming" / "first-takers.parquet"
    )
    return int(changed.item_id.iloc[0])


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refreshed]:
    from tests.serving.conftest import materialize_pipeline

    data = tmp_path_factory.mktemp("catalogue") / "data"
    assert materialize_pipeline(data).success
    reg = ModelRegistry(data / "models")
    parent = reg.current()
    assert parent is not None
    server: Server = start_server(data, data.parent / "server.log")
    try:
        unchanged = run_job(data, "catalogue_refresh")
        changed = drop_new_items(data)
        run = run_job(data, "catalogue_refresh")
        derived = reg.current()
        assert derived is not None and derived != parent, run
        deadline = time.monotonic() + 60
        while (ready := server.get("/readyz")[1]).get("model_version") != derived:
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        # The user whose stored candidates rank a new item highest, and how high.
        table = pd.read_parquet(reg.path(derived) / "candidates.parquet")
        ranks = table.candidate_item_ids.map(
            lambda ids: min([r for r, i in enumerate(ids) if i in NEW_IDS], default=len(ids))
        )
        user, rank = int(table.user_id[ranks.idxmin()]), int(ranks.min())
        answer = server.get(f"/recommendations/{user}?k=100")
        yield Refreshed(data, parent, derived, user, rank, changed, unchanged, run, answer,
                        ready)  # fmt: skip
    finally:
        stop_server(server)


def metadata(result: Any, asset: str) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def test_nothing_to_refresh_makes_no_version(refreshed: Refreshed):
    assert refreshed.unchanged_run.success
    meta = metadata(refreshed.unchanged_run, "catalogue_version")
    assert meta["status"].startswith(f"no version: catalogue unchanged since {refreshed.parent}")
    assert meta["new_items"] == meta["changed_items"] == 0
    assert metadata(refreshed.unchanged_run, "promoted_model")["status"] == (
        "no new version in this run"
    )


def test_the_derived_version_records_its_parent_and_catalogue(refreshed: Refreshed):
    reg = ModelRegistry(refreshed.data / "models")
    info, parent = reg.info(refreshed.derived), reg.info(refreshed.parent)
    assert info["derived_from"] == refreshed.parent and info["state"] == PROMOTED
    assert info["fingerprint"] == parent["fingerprint"]
    assert reg.state(refreshed.parent) == RETIRED
    catalogue = info["catalogue"]
    assert catalogue["new_item_ids"] == list(NEW_IDS) and catalogue["new_items"] == 3
    assert catalogue["changed_item_ids"] == [refreshed.changed]
    assert catalogue["items"] == parent["catalogue"]["items"] + 3
    assert catalogue["dataset_version"] == (refreshed.data / "dataset").resolve().name
    gated = [e for e in reg.record(refreshed.derived)["history"] if e["to"] == GATED]
    assert gated[0]["reason"].startswith(f"quality gate inherited from {refreshed.parent}")
    batch = metadata(refreshed.run, "incoming_batch")
    assert batch["status"] == "accepted" and batch["new_events"] == 2 * 8
    assert batch["catalogue"]["items"] == {"new": 3, "changed": 1, "unchanged": 0}
    meta = metadata(refreshed.run, "catalogue_version")
    assert meta["new_items"] == 3 and meta["changed_items"] == 1
    assert meta["parent"] == refreshed.parent and meta["seconds"] >= 0
    vectors = metadata(refreshed.run, "item_embeddings")
    assert vectors["vectors_computed"] == 4 and vectors["derived_from"] == refreshed.parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_weights_and_the_other_items_vectors_are_the_parents(refreshed: Refreshed):
    from recsys.index.search import ItemIndex

    reg = ModelRegistry(refreshed.data / "models")
    old, new = reg.path(refreshed.parent), reg.path(refreshed.derived)
    for name in ("checkpoint.pt", "checkpoint_eval.pt", "user_tower.onnx", "metrics.json"):
        assert digest(old / name) == digest(new / name), name
    lancedb = refreshed.data / "lancedb"
    before = ItemIndex.open(lancedb, refreshed.parent, mode="matrix")
    after = ItemIndex.open(lancedb, refreshed.derived, mode="matrix")
    assert after.rows == before.rows + 3
    kept = np.isin(after.item_ids, before.item_ids)
    assert np.array_equal(after.item_ids[kept], before.item_ids)
    same = before.item_ids != refreshed.changed
    assert np.array_equal(after.vectors[kept][same], before.vectors[same])  # bit for bit
    changed = before.item_ids == refreshed.changed
    assert not np.array_equal(after.vectors[kept][changed], before.vectors[changed])


def test_the_server_switches_to_it_and_can_recommend_a_new_item(refreshed: Refreshed):
    ready = refreshed.readiness
    assert ready["ready"] and ready["derived_from"] == refreshed.parent
    assert ready["catalogue"]["new_item_ids"] == list(NEW_IDS)
    status, body = refreshed.answer
    assert status == 200 and body["model_version"] == refreshed.derived
    ranks = [r for r, item in enumerate(body["items"]) if item["item_id"] in NEW_IDS]
    # The server, on the derived version, ranks it where the pipeline's candidates did (its
    # ONNX user tower agrees with PyTorch's to 1e-5: a near tie may swap neighbours).
    assert ranks and abs(ranks[0] - refreshed.rank) <= 2, (ranks, refreshed.rank)
    item = body["items"][ranks[0]]
    assert item["title"] == f"New film {item['item_id']}" and item["genres"]


def test_new_items_share_a_bias_at_which_the_median_one_scores_as_the_median_known_item(
    refreshed: Refreshed,
):
    """Their learned bias and popularity prior would rank them below every item with events
    (reaching no one); they take one bias, at which for the catalogue's mean user the median
    new item scores as the median item the model knows (TowerConfig.unknown_item_bias); they
    then compete on how much more than that user each user leans towards them, and the one
    without events reaches users."""
    from evaluation.version_outputs import mean_query
    from recsys.index.search import ItemIndex
    from recsys.settings import Settings, run_as_of
    from recsys.store import feature_store_for
    from towers.checkpoint import load_checkpoint

    reg = ModelRegistry(refreshed.data / "models")
    index = ItemIndex.open(refreshed.data / "lancedb", refreshed.derived, mode="matrix")
    model, encoder, cfg = load_checkpoint(reg.path(refreshed.derived) / "checkpoint.pt")
    settings = Settings(data_dir=refreshed.data)
    users = pd.read_parquet(refreshed.data / "dataset" / "users.parquet").user_id.to_numpy()
    query = mean_query(model, encoder, feature_store_for(settings), users, run_as_of(settings))
    average = index.vectors[:, : cfg.dim] @ query.numpy() + index.vectors[:, -1]  # (N,)
    new = np.isin(index.item_ids, NEW_IDS)
    assert (encoder.item_index(index.item_ids) == 0).sum() == new.sum() == len(NEW_IDS)
    assert np.ptp(index.vectors[new, -1]) == 0  # one bias
    assert np.median(average[new]) == pytest.approx(np.median(average[~new]), abs=1e-4)
    table = pd.read_parquet(reg.path(refreshed.derived) / "candidates.parquet")
    assert table.candidate_item_ids.map(lambda ids: NEW_IDS[-1] in set(ids)).any()
