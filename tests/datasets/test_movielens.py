"""Tests for recsys.datasets.movielens: fetching (pip faked) and both conversions.

The MovieLens data may not be committed, so the conversions are checked exactly on tiny
synthetic folders in the GroupLens and RecBole formats; the slow test fetches the real files.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recsys.datasets.movielens as ml
from recsys.schema import INTERACTIONS, ITEMS, USERS
from recsys.validation.folder import validate_dataset

GENRES = list(ml.GROUPLENS_GENRES)


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# One synthetic dataset in both formats, with the real data's awkward cases.
CHILDRENS = "Children's"
GROUPLENS_ITEMS = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
    + _flags("Animation", CHILDRENS, "Comedy"),
    # The title's year wins over a later release date, as in RecBole.
    "23|Taxi Driver (1976)|16-Feb-1996||http://us.imdb.com/M/title-exact?Taxi%20Driver%20(1976)|"
    + _flags("Drama", "Thriller"),
    "267|unknown||||" + _flags("unknown"),
    "543|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables|"
    + _flags("Drama", "Musical"),
    "900|Untitled Short|05-Mar-1993||http://example.invalid|" + _flags("Documentary"),
    "1412|Land Before Time III: The Time of the Great Giving (1995) (V)|01-Jan-1995||"
    "http://example.invalid|" + _flags("Animation", CHILDRENS),
]
RECBOLE_ITEMS = [
    "1\tToy Story\t1995\tAnimation Children's Comedy",
    "23\tTaxi Driver\t1976\tDrama Thriller",
    "267\tunkonwn\tunkonwn\tunknown",
    "543\tMisérables, Les\t1995\tDrama Musical",
    "900\tUntitled Short\t1993\tDocumentary",
    "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's",
]
USER_ROWS = [("74", "39", "M", "scientist", "T8H1N"), ("1", "24", "M", "technician", "85711"),
             ("8", "36", "M", "administrator", "05201")]  # fmt: skip
RATINGS = [(8, 1, 5, 881250949), (1, 543, 3, 874965758), (1, 1, 4, 874965758),
           (74, 267, 1, 891717742), (1, 900, 2, 874965700), (8, 1412, 4, 881250949)]  # fmt: skip

EXPECTED_USERS = [
    {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"},
    {"user_id": 8, "age": 36, "gender": "M", "occupation": "administrator", "zip_code": "05201"},
    {"user_id": 74, "age": 39, "gender": "M", "occupation": "scientist", "zip_code": "T8H1N"},
]
EXPECTED_ITEMS = [
    {"item_id": 1, "title": "Toy Story", "release_year": 1995,
     "genres": ["Animation", "Children's", "Comedy"]},
    {"item_id": 23, "title": "Taxi Driver", "release_year": 1976, "genres": ["Drama", "Thriller"]},
    {"item_id": 267, "title": "unknown", "release_year": None, "genres": ["unknown"]},
    {"item_id": 543, "title": "Misérables, Les", "release_year": 1995,
     "genres": ["Drama", "Musical"]},
    {"item_id": 900, "title": "Untitled Short", "release_year": 1993, "genres": ["Documentary"]},
    {"item_id": 1412, "title": "Land Before Time III: The Time of the Great Giving",
     "release_year": 1995, "genres": ["Animation", "Children's"]},
]  # fmt: skip
# A source's first ingest: every user and item known from the epoch.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXPECTED_USERS = [{**row, "valid_from": EPOCH} for row in EXPECTED_USERS]
EXPECTED_ITEMS = [{**row, "valid_from": EPOCH} for row in EXPECTED_ITEMS]
# Sorted by (event_timestamp, user_id, item_id).
EXPECTED_INTERACTIONS = [
    {"user_id": u, "item_id": i, "rating": r, "event_timestamp": _ts(t)}
    for u, i, r, t in [(1, 900, 2.0, 874965700), (1, 1, 4.0, 874965758), (1, 543, 3.0, 874965758),
                       (8, 1, 5.0, 881250949), (8, 1412, 4.0, 881250949),
                       (74, 267, 1.0, 891717742)]
]  # fmt: skip


def write_grouplens(folder: Path, with_genre_file: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (folder / "u.user").write_text("".join("|".join(row) + "\n" for row in USER_ROWS))
    (folder / "u.item").write_bytes(("\n".join(GROUPLENS_ITEMS) + "\n").encode("latin-1"))
    if with_genre_file:  # the real u.genre ends with a blank line
        lines = "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES))
        (folder / "u.genre").write_text(lines + "\n")
    return folder


def recbole_files() -> dict[str, bytes]:
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user += ["\t".join(row) for row in USER_ROWS]
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item += RECBOLE_ITEMS
    tables = {"ml-100k.inter": inter, "ml-100k.user": user, "ml-100k.item": item}
    return {name: ("\n".join(lines) + "\n").encode() for name, lines in tables.items()}


def read_canonical(folder: Path) -> dict[str, pa.Table]:
    return {n: pq.read_table(folder / f"{n}.parquet") for n in ("users", "items", "interactions")}


def assert_expected(folder: Path) -> None:
    tables = read_canonical(folder)
    # Exact Arrow types, including timestamp[us, tz=UTC] rather than ns.
    assert tables["users"].schema.equals(USERS)
    assert tables["items"].schema.equals(ITEMS)
    assert tables["interactions"].schema.equals(INTERACTIONS)
    assert tables["interactions"].schema.field("event_timestamp").type == pa.timestamp("us", "UTC")
    assert tables["users"].to_pylist() == EXPECTED_USERS
    assert tables["items"].to_pylist() == EXPECTED_ITEMS
    assert tables["interactions"].to_pylist() == EXPECTED_INTERACTIONS
    validate_dataset(folder)


def test_grouplens_conversion_is_exact(tmp_path: Path) -> None:
    ml.grouplens_to_canonical(write_grouplens(tmp_path / "ml-100k"), tmp_path / "out")
    assert_expected(tmp_path / "out")
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_grouplens_without_genre_file_uses_standard_genres(tmp_path: Path) -> None:
    src = write_grouplens(tmp_path / "ml-100k", with_genre_file=False)
    ml.grouplens_to_canonical(src, tmp_path / "out")
    assert_expected(tmp_path / "out")


@pytest.mark.parametrize("missing", ["u.data", "u.user", "u.item"])
def test_grouplens_missing_file_names_folder_and_file(tmp_path: Path, missing: str) -> None:
    src = write_grouplens(tmp_path / "ml-100k")
    (src / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing) as info:
        ml.grouplens_to_canonical(src, tmp_path / "out")
    assert str(src) in str(info.value)


def test_grouplens_item_with_wrong_field_count_is_rejected(tmp_path: Path) -> None:
    src = write_grouplens(tmp_path / "ml-100k")
    (src / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||url|0|1\n")
    with pytest.raises(ValueError, match="u.item"):
        ml.grouplens_to_canonical(src, tmp_path / "out")


def test_recbole_conversion_is_exact_and_matches_grouplens(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, data in recbole_files().items():
        (raw / name).write_bytes(data)
    ml.movielens_100k_to_canonical(raw, tmp_path / "recbole")
    assert_expected(tmp_path / "recbole")
    ml.grouplens_to_canonical(write_grouplens(tmp_path / "ml-100k"), tmp_path / "grouplens")
    for name in ("users", "items", "interactions"):
        a, b = (pq.read_table(tmp_path / d / f"{name}.parquet") for d in ("recbole", "grouplens"))
        assert a.equals(b, check_metadata=True), name


# --- fetching, with pip replaced by a fake that "downloads" a synthetic wheel -------------


@pytest.fixture
def fake_pypi(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point the module's hashes at a synthetic wheel and fake ``pip download``."""
    files = recbole_files()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(f"{ml.WHEEL_MEMBER_DIR}/{name}"), data)
    wheel = buf.getvalue()
    monkeypatch.setattr(ml, "RECBOLE_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    monkeypatch.setattr(
        ml, "RAW_FILE_SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    )
    state: dict = {"calls": [], "files": files, "fail": None}

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        state["calls"].append(cmd)
        if state["fail"] is not None:
            return subprocess.CompletedProcess(cmd, 1, "", state["fail"])
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / ml.RECBOLE_WHEEL).write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, 0, "Successfully downloaded recbole\n", "")

    monkeypatch.setattr(ml.subprocess, "run", fake_run)
    return state


def assert_nothing_placed(cache: Path) -> None:
    assert sorted(p.name for p in cache.iterdir()) == []  # no raw file, no staging folder


def test_fetch_downloads_verifies_and_places_files(tmp_path: Path, fake_pypi: dict) -> None:
    cache = tmp_path / "cache"
    assert ml.fetch_movielens_100k(cache) == cache
    (cmd,) = fake_pypi["calls"]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"recbole==1.2.1", "--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert sorted(p.name for p in cache.iterdir()) == sorted(fake_pypi["files"])
    for name, data in fake_pypi["files"].items():
        assert (cache / name).read_bytes() == data
    ml.movielens_100k_to_canonical(cache, tmp_path / "out")
    assert_expected(tmp_path / "out")


def test_fetch_uses_valid_cache_without_network(tmp_path: Path, fake_pypi: dict) -> None:
    cache = ml.fetch_movielens_100k(tmp_path / "cache")
    fake_pypi["fail"] = "network is unreachable"
    assert ml.fetch_movielens_100k(cache) == cache
    assert len(fake_pypi["calls"]) == 1


def test_fetch_replaces_corrupt_cached_file(tmp_path: Path, fake_pypi: dict) -> None:
    cache = ml.fetch_movielens_100k(tmp_path / "cache")
    (cache / "ml-100k.item").write_text("truncated")
    ml.fetch_movielens_100k(cache)
    assert len(fake_pypi["calls"]) == 2
    assert (cache / "ml-100k.item").read_bytes() == fake_pypi["files"]["ml-100k.item"]


def test_fetch_rejects_wheel_with_wrong_checksum(
    tmp_path: Path, fake_pypi: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ml, "RECBOLE_WHEEL_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ml.DatasetFetchError, match=ml.RECBOLE_WHEEL) as info:
        ml.fetch_movielens_100k(cache)
    assert "0" * 64 in str(info.value)
    assert len([w for w in str(info.value).split() if len(w) == 64 and w != "0" * 64]) == 1
    assert_nothing_placed(cache)


def test_fetch_rejects_member_with_wrong_checksum(
    tmp_path: Path, fake_pypi: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ml.RAW_FILE_SHA256, "ml-100k.user", "f" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ml.DatasetFetchError, match=r"ml-100k\.user.*f{64}"):
        ml.fetch_movielens_100k(cache)
    assert_nothing_placed(cache)  # not even the files that did verify


def test_fetch_without_network_says_what_to_do(tmp_path: Path, fake_pypi: dict) -> None:
    fake_pypi["fail"] = "WARNING: Retrying...\nERROR: No matching distribution found for recbole"
    cache = tmp_path / "cache"
    with pytest.raises(ml.DatasetFetchError) as info:
        ml.fetch_movielens_100k(cache)
    message = str(info.value)
    assert "https://grouplens.org/datasets/movielens/100k/" in message
    assert "--dataset /path/to/ml-100k" in message
    assert str(cache) in message and "ml-100k.inter" in message
    assert "No matching distribution found for recbole" in message
    assert_nothing_placed(cache)


# --- the real data ----------------------------------------------------------------------


@pytest.mark.slow
def test_real_movielens_100k_from_recbole_wheel(tmp_path: Path) -> None:
    raw = ml.fetch_movielens_100k(tmp_path / "cache")
    ml.movielens_100k_to_canonical(raw, tmp_path / "out")
    validate_dataset(tmp_path / "out")
    tables = read_canonical(tmp_path / "out")
    assert tables["users"].schema.equals(USERS) and tables["items"].schema.equals(ITEMS)
    assert tables["interactions"].schema.equals(INTERACTIONS)
    users, items = tables["users"].to_pandas(), tables["items"].to_pandas()
    inter = tables["interactions"].to_pandas()
    assert (len(inter), len(users), len(items)) == (100_000, 943, 1682)
    assert inter["user_id"].nunique() == 943 and inter["item_id"].nunique() == 1682
    assert set(inter["rating"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter["event_timestamp"].min() >= pd.Timestamp("1997-09-01", tz="UTC")
    assert inter["event_timestamp"].max() < pd.Timestamp("1998-05-01", tz="UTC")
    same_second = inter.groupby(["user_id", "event_timestamp"])["item_id"].transform("size")
    assert int((same_second > 1).sum()) == 75_772
    assert items["genres"].map(len).min() >= 1
    assert items["release_year"].isna().sum() == 1  # item 267, MovieLens's "unknown"
    by_id = items.set_index("item_id")
    assert by_id.loc[1, "title"] == "Toy Story" and by_id.loc[1, "release_year"] == 1995
    assert list(by_id.loc[1, "genres"]) == ["Animation", "Children's", "Comedy"]
    assert by_id.loc[1412, "release_year"] == 1995
    assert users.set_index("user_id").loc[8, "zip_code"] == "05201"
    assert "T8H1N" in set(users["zip_code"])
