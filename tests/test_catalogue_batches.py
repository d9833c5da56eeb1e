"""Users and items arrive in batches: new ones and changes, each true from its ``valid_from``.

A batch of users + items + interactions is staged as one (the interactions may refer to the
batch's new user and item), appended, and the profile / item attribute in force at each
training row's time reaches it through the real feature build and Feast's point-in-time
join; a new user's profile reaches the online store. Bad batches are rejected whole.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys import incoming
from recsys import store as feast_store
from recsys.dataset import append_accepted, ensure_dataset
from recsys.features.build import build_features, default_as_of
from recsys.features.ops import EPOCH
from recsys.incoming_checks import catalogue_check_names
from recsys.schema import DatasetValidationError
from recsys.training_set import build_training_set
from recsys.validation.folder import validate_dataset
from tests.conftest import event, item, ts, user, write_dataset

T0, T1, T2 = "2024-01-01 10:00:00", "2024-01-10 10:00:00", "2024-01-20 10:00:00"
CHANGE = "2024-01-15 00:00:00"  # user 1 turns 60, item 10 becomes a comedy
T3, T4 = "2024-02-01 10:00:00", "2024-02-10 10:00:00"


def source(tmp_path):
    return write_dataset(
        tmp_path / "src",
        users=[user(1, age=30), user(2, age=40)],
        items=[item(10, ["Drama"]), item(11, ["Action"]), item(12, ["Comedy"])],
        interactions=[event(1, 10, T0), event(2, 11, T0), event(2, 10, T1), event(1, 11, T1)],
    )


@pytest.fixture
def settings(settings_for, tmp_path):
    settings = settings_for(source(tmp_path))
    ensure_dataset(settings)
    return settings


def drop(settings, table: str, rows: list[dict], name: str = "b.parquet") -> None:
    folder = settings.paths.incoming / ("" if table == "interactions" else table)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / name)


def dataset(settings, table: str) -> pd.DataFrame:
    path = settings.paths.dataset / f"{table}.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def changed(rows: dict, when: str) -> dict:
    return {**rows, "valid_from": ts(when)}


# --- staging and appending ----------------------------------------------------------------


def test_new_user_and_item_with_their_first_interactions(settings):
    drop(settings, "users", [changed(user(3, age=22), T2)])
    drop(settings, "items", [changed(item(13, ["Horror"]), T2)])
    drop(settings, "interactions", [event(3, 13, T3), event(3, 10, T3)])
    staged = incoming.stage(settings)
    assert staged.status == "accepted", staged.report.markdown()
    assert staged.new_events == 2
    assert staged.catalogue == {"users": {"new": 1, "changed": 0, "unchanged": 0},
                                "items": {"new": 1, "changed": 0, "unchanged": 0}}  # fmt: skip
    result = append_accepted(settings)
    assert result.appended == [staged.batch_id] and result.new_events == 2
    users = dataset(settings, "users").set_index("user_id")
    assert users.loc[3, "age"] == 22 and users.loc[3, "valid_from"] == ts(T2)
    assert users.loc[1, "valid_from"] == EPOCH  # the source's first ingest
    assert 13 in set(dataset(settings, "items").item_id)
    assert len(dataset(settings, "interactions")) == 6
    manifest = json.loads((settings.paths.dataset / "manifest.json").read_text())
    assert manifest["catalogue_changes"][staged.batch_id]["users"]["new"] == 1
    assert manifest["users"] == 3
    processed = settings.paths.incoming / "processed" / staged.batch_id
    assert (processed / "users" / "b.parquet").exists()
    assert (processed / "normalised.users.parquet").exists()


def test_a_change_makes_the_old_row_history(settings):
    drop(settings, "users", [changed(user(1, age=60), CHANGE)])
    assert incoming.stage(settings).catalogue["users"]["changed"] == 1
    append_accepted(settings)
    assert dataset(settings, "users").set_index("user_id").loc[1, "age"] == 60
    history = dataset(settings, "users_history")
    assert history[["user_id", "age"]].values.tolist() == [[1, 30]]
    assert history.valid_from.tolist() == [EPOCH]
    validate_dataset(settings.paths.dataset)  # history checked: older than the current row


def test_files_of_a_batch_killed_before_its_record_are_staged_again(settings):
    accepted = settings.paths.incoming / "accepted"
    accepted.mkdir(parents=True)
    for name in ("X.parquet", "X.users.parquet", "X.items.parquet"):  # no X.json: no commit
        (accepted / name).write_bytes(b"partial")
    drop(settings, "users", [changed(user(3), T2)])
    staged = incoming.stage(settings)
    assert staged.status == "accepted"
    assert sorted(p.name for p in accepted.iterdir()) == sorted(
        f"{staged.batch_id}{suffix}" for suffix in (".parquet", ".users.parquet", ".json")
    )


def test_a_run_killed_after_publishing_moves_the_versions_next_time(settings, monkeypatch):
    import recsys.dataset as ds

    drop(settings, "users", [changed(user(3), T2)])
    staged = incoming.stage(settings)
    finish = ds._finish

    def killed(paths, records):
        if records:
            raise KeyboardInterrupt
        finish(paths, records)

    monkeypatch.setattr(ds, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):  # killed between the publish and the move
        append_accepted(settings)
    assert 3 in set(dataset(settings, "users").user_id)
    monkeypatch.setattr(ds, "_finish", finish)
    assert append_accepted(settings).appended == [staged.batch_id]
    processed = settings.paths.incoming / "processed" / staged.batch_id
    assert (processed / "normalised.users.parquet").exists()
    assert not list((settings.paths.incoming / "accepted").iterdir())
    assert len(dataset(settings, "users")) == 3  # appended once


def test_invalid_user_row_rejects_the_whole_batch(settings):
    before = {t: dataset(settings, t) for t in ("users", "interactions")}
    drop(settings, "users", [changed(user(3, age=-4), T2)])
    drop(settings, "interactions", [event(3, 10, T3)])
    staged = incoming.stage(settings)
    assert staged.status == "rejected"
    failed = {o.name: o for o in staged.report.failed}
    assert set(failed) == {"users.age in range"}
    assert failed["users.age in range"].table == "users"
    assert failed["users.age in range"].unexpected_count == 1
    # Every outcome of the user rows has a name a caller can declare a check for.
    users = {o.name for o in staged.report.outcomes if o.table == "users"}
    assert "users.age in range" in users and users <= set(catalogue_check_names())
    folder = settings.paths.incoming / "rejected" / staged.batch_id
    assert (folder / "users" / "b.parquet").exists() and (folder / "b.parquet").exists()
    report = json.loads((folder / "report.json").read_text())
    assert report["checks"]["users.age in range"]["unexpected_count"] == 1
    assert "users.age" in (folder / "report.md").read_text()
    assert append_accepted(settings).appended == []
    for table, frame in before.items():
        pd.testing.assert_frame_equal(dataset(settings, table), frame)


def test_unreadable_items_file_fails_the_items_check(settings):
    drop(settings, "users", [changed(user(3), T2)])
    folder = settings.paths.incoming / "items"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.parquet").write_bytes(b"not parquet")
    staged = incoming.stage(settings)
    assert staged.status == "rejected"
    failed = {o.name: o for o in staged.report.failed}
    assert set(failed) == {"items readable"} and "items readable" in catalogue_check_names()
    assert failed["items readable"].table == "items"
    assert "broken.parquet" in failed["items readable"].detail


def test_null_id_and_unknown_user_are_rejected(settings):
    drop(settings, "users", [{**user(3), "user_id": None}])
    drop(settings, "interactions", [event(4, 10, T3)])  # user 4 is nowhere
    staged = incoming.stage(settings)
    names = {o.name for o in staged.report.failed}
    assert {"users.user_id not null", "interactions.user_id known"} <= names


def test_resent_users_file_and_resent_profile_are_duplicates(settings):
    rows = [changed(user(1, age=60), CHANGE)]
    drop(settings, "users", rows, "a.parquet")
    first = incoming.stage(settings)
    append_accepted(settings)
    drop(settings, "users", rows, "a.parquet")  # the same file again: known by its content
    again = incoming.stage(settings)
    assert again.status == "duplicate" and again.duplicate_files == {
        "users/a.parquet": first.batch_id
    }
    assert (
        settings.paths.incoming / "duplicates" / again.batch_id / "users" / "a.parquet"
    ).exists()
    # The same profile in another file, stamped later: what was already true, a no-op.
    drop(
        settings, "users", [changed(user(1, age=60), T3), changed(user(2, age=40), T3)], "c.parquet"
    )
    resent = incoming.stage(settings)
    assert resent.status == "duplicate"
    assert resent.catalogue["users"] == {"new": 0, "changed": 0, "unchanged": 2}
    assert len(dataset(settings, "users_history")) == 1


def test_conflicting_change_is_rejected(settings):
    drop(settings, "users", [changed(user(1, age=60), CHANGE)])
    incoming.stage(settings)
    # Another batch gives the same (user, valid_from) another age: a rewrite of the past.
    drop(settings, "users", [changed(user(1, age=61), CHANGE)], "d.parquet")
    staged = incoming.stage(settings)
    assert staged.status == "rejected"
    (outcome,) = staged.report.failed
    assert outcome.name == "users versions consistent"
    assert "user_id 1 at valid_from 2024-01-15" in outcome.detail and "'age': 61" in outcome.detail


def test_conflict_within_a_batch_and_future_versions_are_rejected(settings):
    drop(settings, "items", [changed(item(10, ["Drama"]), CHANGE),
                             changed(item(10, ["Comedy"]), CHANGE),
                             changed(item(11, ["Action"]), "2999-01-01 00:00:00")])  # fmt: skip
    names = {o.name for o in incoming.stage(settings).report.failed}
    assert names == {"items versions unique", "items.valid_from not after as_of"}


def test_default_valid_from_is_the_arrival(settings_for, tmp_path):
    settings = settings_for(source(tmp_path), as_of=ts(T4))
    ensure_dataset(settings)
    drop(settings, "users", [user(5, age=33)])  # no valid_from column
    incoming.stage(settings)
    append_accepted(settings)
    assert dataset(settings, "users").set_index("user_id").loc[5, "valid_from"] == ts(T4)


def test_a_profile_newer_than_every_event_is_inside_the_default_as_of(settings):
    drop(settings, "users", [changed(user(3, age=22), T4)])  # after the last event (T1)
    incoming.stage(settings)
    append_accepted(settings)
    assert default_as_of(settings.paths.dataset) == ts(T4) + timedelta(microseconds=1)


def test_dataset_without_valid_from_still_works(settings_for, tmp_path):
    """A folder published before versions were recorded: read as the epoch, appended to."""
    settings = settings_for(source(tmp_path))
    ensure_dataset(settings)
    for table in ("users", "items"):
        path = settings.paths.dataset / f"{table}.parquet"
        pq.write_table(pq.read_table(path).drop(["valid_from"]), path)
    build_features(settings.paths.dataset, settings.paths.features, settings.paths.data_dir)
    profile = pd.read_parquet(settings.paths.features / "user_profile.parquet")
    assert set(profile.event_timestamp) == {EPOCH}
    drop(settings, "users", [changed(user(1, age=60), CHANGE)])
    assert incoming.stage(settings).catalogue["users"]["changed"] == 1
    assert append_accepted(settings).rejected == []
    assert dataset(settings, "users_history").valid_from.tolist() == [EPOCH]


def test_history_must_be_older_versions_of_current_rows(settings, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("users", "items", "interactions"):
        (copy / f"{name}.parquet").write_bytes(
            (settings.paths.dataset / f"{name}.parquet").read_bytes()
        )
    # User 1's only "older" version has the same valid_from as its current row.
    users = pq.read_table(copy / "users.parquet")
    pq.write_table(users.slice(0, 1), copy / "users_history.parquet")
    with pytest.raises(DatasetValidationError, match="not earlier than the current row"):
        validate_dataset(copy)
    pq.write_table(
        users.slice(0, 1).set_column(0, "user_id", [[7]]), copy / "users_history.parquet"
    )
    with pytest.raises(
        DatasetValidationError, match="refers to users that are not in users.parquet"
    ):
        validate_dataset(copy)


# --- through the feature build and Feast's point-in-time join -------------------------------


@pytest.fixture
def built(settings_for, tmp_path):
    """User 1 turns 60 and item 10 becomes a comedy at CHANGE; user 3 and item 13 arrive at
    T2 with their first interaction at T3."""
    settings = settings_for(source(tmp_path), val_start=ts(T3), test_start=ts(T4))
    ensure_dataset(settings)
    drop(settings, "users", [changed(user(1, age=60), CHANGE), changed(user(3, age=22), T2)])
    drop(settings, "items", [changed(item(10, ["Comedy"]), CHANGE),
                             changed(item(13, ["Horror"]), T2)])  # fmt: skip
    drop(settings, "interactions", [event(1, 12, T2), event(2, 10, T2), event(3, 13, T3),
                                    event(1, 13, T4)])  # fmt: skip
    assert incoming.stage(settings).status == "accepted"
    assert append_accepted(settings).rejected == []
    paths = settings.paths
    build_features(paths.dataset, paths.features, paths.data_dir, recent_items=3)
    store = feast_store.apply(paths)
    rows = pd.read_parquet(build_training_set(settings, store).path)
    return settings, store, rows


def cells(rows: pd.DataFrame, user_id: int, item_id: int, column: str) -> list:
    """``column`` of the training rows of (user, item), oldest first; lists as lists."""
    match = rows[(rows.user_id == user_id) & (rows.item_id == item_id)]
    values = match.sort_values("event_timestamp")[column].tolist()
    return [list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in values]


def test_profile_change_is_visible_after_it_and_not_before(built):
    _, _, rows = built
    assert cells(rows, 1, 10, "age_bucket") == ["25-34"]  # T0, before the change
    assert cells(rows, 1, 11, "age_bucket") == ["25-34"]  # T1, before the change
    assert cells(rows, 1, 12, "age_bucket") == ["56+"]  # T2, after it
    assert cells(rows, 1, 13, "age_bucket") == ["56+"]
    assert cells(rows, 2, 11, "age_bucket") == ["35-44"]  # unchanged since the epoch


def test_item_change_is_visible_after_it_and_not_before(built):
    _, _, rows = built
    assert cells(rows, 1, 10, "item_genres") == [["Drama"]]  # T0, before the change
    assert cells(rows, 2, 10, "item_genres") == [["Drama"], ["Comedy"]]  # T1, then T2


def test_user_genre_shares_use_the_genres_in_force_at_each_event(built):
    settings, _, rows = built
    genres = json.loads((settings.paths.features / "manifest.json").read_text())["genres"]
    assert genres == ["Action", "Comedy", "Drama", "Horror"]  # Drama only in the history
    # User 2 at T2: item 11 (Action) at T0 and item 10 at T1, a drama then (a comedy later).
    (shares,) = cells(rows, 2, 10, "user_genre_affinity")[1:]
    assert shares == pytest.approx([0.5, 0.0, 0.5, 0.0])


def test_new_user_and_item_have_their_attributes(built):
    _, _, rows = built
    assert cells(rows, 3, 13, "age_bucket") == ["18-24"]
    assert cells(rows, 3, 13, "item_genres") == [["Horror"]]


def test_online_store_holds_the_new_users_profile(built):
    settings, store, _ = built
    # As the pipeline does: up to the features' as_of.
    feast_store.materialize(settings.paths, end=default_as_of(settings.paths.dataset), store=store)
    online = store.get_online_features(
        features=store.get_feature_service("user_tower_serving_v1"),
        entity_rows=[{"user_id": 3}, {"user_id": 1}, {"user_id": 99}],
    ).to_dict()
    assert online["age_bucket"] == ["18-24", "56+", None]
