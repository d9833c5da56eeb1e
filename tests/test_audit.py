"""The audits run on staged artifacts before they are published (recsys.audit): each
passes on good data and fails, naming the check, on data with the fault it looks for."""

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from recsys.audit import audit_candidates, publish_audited
from tests.conftest import event, item, user, write_dataset

AS_OF = datetime(2024, 2, 1, tzinfo=UTC)


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(
        tmp_path / "d", users=[user(1), user(2)], items=[item(10), item(11), item(12)],
        interactions=[event(1, 10, "2024-01-01 10:00:00"), event(2, 11, "2024-01-02 10:00:00"),
                      event(1, 12, "2024-03-01 10:00:00")],  # after as_of: not "seen" yet
    )  # fmt: skip


def candidates(rows):
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "candidate_item_ids": pa.array([r[1] for r in rows], pa.list_(pa.int64())),
        "model_version": pa.array([r[2] for r in rows], pa.string()),
    })  # fmt: skip


def test_good_candidates_pass(dataset):
    table = candidates([(1, [11, 12], "v1"), (2, [10, 12], "v1")])
    assert audit_candidates(table, "v1", dataset, AS_OF).passed


@pytest.mark.parametrize(
    ("rows", "failed"),
    [
        ([(1, [10, 12], "v1"), (2, [12], "v1")], "candidates exclude seen items"),
        ([(1, [11], "v1"), (2, [12], "v0")], "candidates of this version"),
        ([(1, [11], "v1"), (1, [12], "v1")], "candidates one row per user"),
    ],
)
def test_faulty_candidates_fail_the_check_that_names_the_fault(dataset, rows, failed):
    audit = audit_candidates(candidates(rows), "v1", dataset, AS_OF)
    assert audit.failed == [failed]


def test_a_failed_audit_publishes_nothing_and_keeps_the_rejected_folder(tmp_path):
    from recsys.audit import Audit
    from recsys.io import publish_dir

    data = tmp_path / "data"
    good = data / ".staging" / "a"
    good.mkdir(parents=True)
    (good / "x.txt").write_text("good")
    publish_dir(good, data / "thing")
    bad = data / ".staging" / "b"
    bad.mkdir()
    (bad / "x.txt").write_text("bad")
    audit = publish_audited(bad, data / "thing", data,
                            lambda folder: Audit("thing", {"x is good": False}))  # fmt: skip
    assert not audit.passed and audit.kept_at is not None
    assert (data / "thing" / "x.txt").read_text() == "good"  # the published one, untouched
    kept = data / "rejected" / audit.kept_at.rsplit("/", 1)[-1]
    assert (kept / "x.txt").read_text() == "bad" and (kept / "report.json").exists()


def test_feature_audit_names_a_repeated_row_of_a_view_with_list_cells(dataset, tmp_path):
    import pyarrow.parquet as pq

    from recsys.audit import audit_features
    from recsys.features.build import compute_features

    out = tmp_path / "features"
    out.mkdir()
    compute_features(dataset, out, as_of=AS_OF)
    assert audit_features(out).passed
    # A repeated row of a view with list cells (recent_item_ids): one row per user and time.
    path = out / "user_activity.parquet"
    table = pq.read_table(path)
    assert pa.types.is_list(table.schema.field("recent_item_ids").type)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), path)
    audit = audit_features(out)
    assert audit.failed == ["user_activity valid"]
    assert "user_activity rows unique" in audit.details["user_activity valid"]["failed"]
