"""MovieLens-100K: fetch the raw files and convert them to the canonical dataset folder.

The canonical folder holds ``users.parquet``, ``items.parquet`` and ``interactions.parquet``
with the exact Arrow types of ``recsys.schema`` (timestamps in microseconds, UTC: Feast fails
on nanoseconds).

Two sources give the same canonical output:

* the RecBole 1.2.1 wheel on PyPI, which ships MovieLens-100K as atomic files. The MovieLens
  licence forbids committing the data, and PyPI is the one data host every machine of this
  project reaches, so ``fetch_movielens_100k`` downloads the wheel at run time and checks hashes;
* the original GroupLens ``ml-100k/`` folder (``u.data``, ``u.user``, ``u.item``, ``u.genre``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.schema import INTERACTIONS as INTERACTIONS_SCHEMA
from recsys.schema import ITEMS_UNSTAMPED as ITEMS_SCHEMA
from recsys.schema import USERS_UNSTAMPED as USERS_SCHEMA
from recsys.schema import stamped_at_epoch

logger = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_MEMBER_DIR = "recbole/dataset_example/ml-100k"
RAW_FILE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
GROUPLENS_URL = "https://grouplens.org/datasets/movielens/100k/"
# The order of the genre flags in u.item, used when u.genre is absent.
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# A title's trailing year, e.g. "Toy Story (1995)"; one GroupLens title adds a video marker:
# "Land Before Time III: The Time of the Great Giving (1995) (V)".
_TITLE_YEAR = re.compile(r"\s*\((\d{4})\)(?:\s*\(V\))?\s*$")


class DatasetFetchError(RuntimeError):
    """The raw MovieLens files could not be fetched or failed their checksum."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_sha256(path: Path, expected: str, label: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise DatasetFetchError(
            f"checksum mismatch for {label}: expected sha256 {expected}, got {actual}"
        )


def _cache_is_valid(cache_dir: Path) -> bool:
    for name, expected in RAW_FILE_SHA256.items():
        path = cache_dir / name
        if not path.is_file():
            return False
        if _sha256(path) != expected:
            logger.warning("cached %s fails its checksum; fetching it again", path)
            return False
    return True


def _pip_download(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT, "--no-deps",
        "--only-binary=:all:", "--disable-pip-version-check", "--no-input", "-d", str(dest),
    ]  # fmt: skip
    logger.info("downloading %s from PyPI for its MovieLens-100K files", RECBOLE_WHEEL)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        failure = proc.stderr if proc.returncode != 0 else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = str(exc)
    wheel = dest / RECBOLE_WHEEL
    if failure is None and not wheel.is_file():
        failure = f"pip succeeded but {RECBOLE_WHEEL} is not in {dest}"
    if failure is not None:
        tail = "\n".join(failure.strip().splitlines()[-15:])
        raise DatasetFetchError(
            f"could not download {RECBOLE_REQUIREMENT} with pip (is PyPI reachable?).\n"
            f"Instead, download MovieLens-100K from GroupLens ({GROUPLENS_URL}), unzip it and "
            f"pass the ml-100k/ folder: --dataset /path/to/ml-100k\n"
            f"or place the RecBole files {', '.join(RAW_FILE_SHA256)} in {dest.parent}.\n"
            f"pip said:\n{tail}"
        )
    return wheel


def fetch_movielens_100k(cache_dir: Path) -> Path:
    """Return ``cache_dir`` holding the verified RecBole files ml-100k.{inter,user,item}.

    Files already there with the right hashes are used as they are, without the network.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if _cache_is_valid(cache_dir):
        logger.info("MovieLens-100K raw files found in %s", cache_dir)
        return cache_dir
    # Stage inside cache_dir so the final os.replace stays on one filesystem and is atomic:
    # an interrupted fetch leaves no half-written file under a real name.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        staging = Path(tmp)
        wheel = _pip_download(staging)
        _check_sha256(wheel, RECBOLE_WHEEL_SHA256, RECBOLE_WHEEL)
        with zipfile.ZipFile(wheel) as zf:
            for name, expected in RAW_FILE_SHA256.items():
                member = f"{WHEEL_MEMBER_DIR}/{name}"
                try:
                    data = zf.read(member)
                except KeyError:
                    raise DatasetFetchError(f"{RECBOLE_WHEEL} has no {member}") from None
                (staging / name).write_bytes(data)
                _check_sha256(staging / name, expected, f"{name} from {RECBOLE_WHEEL}")
        for name in RAW_FILE_SHA256:
            os.replace(staging / name, cache_dir / name)
    logger.info("MovieLens-100K raw files fetched into %s", cache_dir)
    return cache_dir


def _split_title_year(title: str) -> tuple[str, int | None]:
    match = _TITLE_YEAR.search(title)
    if match is None:
        return title.strip(), None
    return title[: match.start()].strip(), int(match.group(1))


def _interactions_table(
    user_id: pd.Series, item_id: pd.Series, rating: pd.Series, unix_seconds: pd.Series
) -> pa.Table:
    # Build microseconds directly from the seconds: no detour through pandas' ns timestamps.
    micros = np.round(unix_seconds.to_numpy(dtype=np.float64) * 1_000_000).astype(np.int64)
    df = pd.DataFrame(
        {"user_id": user_id.to_numpy(np.int64), "item_id": item_id.to_numpy(np.int64),
         "rating": rating.to_numpy(np.float64), "micros": micros}
    )  # fmt: skip
    # A fixed order makes the output identical whichever source it came from; time order
    # as in recsys.validation.folder.normalize_dataset, so feature SQL and Feast's time filters read less.
    df = df.sort_values(["micros", "user_id", "item_id"], kind="stable")
    arrays = [
        pa.array(df["user_id"].to_numpy(), pa.int64()),
        pa.array(df["item_id"].to_numpy(), pa.int64()),
        pa.array(df["rating"].to_numpy(), pa.float64()),
        pa.array(df["micros"].to_numpy(), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    ]
    return pa.Table.from_arrays(arrays, schema=INTERACTIONS_SCHEMA)


def _users_table(df: pd.DataFrame) -> pa.Table:
    df = df.astype({"user_id": np.int64, "age": np.int64}).sort_values("user_id")
    # dtype=str on read keeps zip codes such as '05201' and 'T8H1N' as written.
    table = pa.Table.from_pandas(df[USERS_SCHEMA.names], schema=USERS_SCHEMA, preserve_index=False)
    # No pandas metadata: same bytes from any source.
    return stamped_at_epoch(table.replace_schema_metadata(None))


def _items_table(rows: list[tuple[int, str, int | None, list[str]]]) -> pa.Table:
    rows = sorted(rows, key=lambda row: row[0])
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    arrays = [
        pa.array(list(col), type=field.type)
        for col, field in zip(columns, ITEMS_SCHEMA, strict=True)
    ]
    return stamped_at_epoch(pa.Table.from_arrays(arrays, schema=ITEMS_SCHEMA))


def _write_canonical(out_dir: Path, users: pa.Table, items: pa.Table, inter: pa.Table) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in (("users", users), ("items", items), ("interactions", inter)):
        final = out_dir / f"{name}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # readers never see a half-written file
    logger.info(
        "canonical MovieLens-100K in %s: %d users, %d items, %d interactions",
        out_dir, users.num_rows, items.num_rows, inter.num_rows,
    )  # fmt: skip


def _read_recbole(path: Path) -> pd.DataFrame:
    # QUOTE_NONE: titles are raw text, a quote character in one must not start a quoted field.
    df = pd.read_csv(
        path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8"
    )
    df.columns = [c.split(":", 1)[0] for c in df.columns]  # "user_id:token" -> "user_id"
    return df


def movielens_100k_to_canonical(raw_dir: Path, out_dir: Path) -> None:
    """Convert the RecBole files ml-100k.{inter,user,item} in ``raw_dir`` to ``out_dir``."""
    raw_dir = Path(raw_dir)
    for name in RAW_FILE_SHA256:
        if not (raw_dir / name).is_file():
            raise FileNotFoundError(f"{raw_dir}: expected the RecBole file {name}")
    inter = _read_recbole(raw_dir / "ml-100k.inter")
    interactions = _interactions_table(
        inter["user_id"], inter["item_id"], inter["rating"].astype(np.float64),
        inter["timestamp"].astype(np.float64),
    )  # fmt: skip
    users = _users_table(_read_recbole(raw_dir / "ml-100k.user"))
    rows = []
    for item_id, title, year, classes in _read_recbole(raw_dir / "ml-100k.item").itertuples(
        index=False
    ):
        release_year = int(year) if re.fullmatch(r"\d{4}", year) else None
        if release_year is None:
            # RecBole took the last "(...)" of the title as the year: item 1412 has year 'V'
            # and keeps "(1995)" in its title. Recover it as the GroupLens conversion does.
            title, release_year = _split_title_year(title)
        if title == "unkonwn":  # RecBole's typo for GroupLens's placeholder item 267
            title = "unknown"
        rows.append((int(item_id), title, release_year, classes.split()))
    _write_canonical(out_dir, users, _items_table(rows), interactions)


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a GroupLens MovieLens-100K folder: {name} is missing "
            f"(expected the unzipped ml-100k/ folder with u.data, u.user and u.item)"
        )
    return path


def _grouplens_genres(folder: Path) -> list[str]:
    path = folder / "u.genre"
    if not path.is_file():
        return list(GROUPLENS_GENRES)
    pairs = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.strip():
            name, index = line.rsplit("|", 1)
            pairs.append((int(index), name))
    return [name for _, name in sorted(pairs)]


def _read_pipe(path: Path, names: list[str]) -> pd.DataFrame:
    # u.item is latin-1 (e.g. "Misérables, Les"); the other files are ASCII.
    df = pd.read_csv(
        path, sep="|", header=None, dtype=str, keep_default_na=False,
        quoting=csv.QUOTE_NONE, encoding="latin-1",
    )  # fmt: skip
    # Checked rather than passed as names=, with which pandas would silently turn surplus
    # leading columns into an index.
    if df.shape[1] != len(names):
        raise ValueError(f"{path}: expected {len(names)} '|'-separated fields, got {df.shape[1]}")
    df.columns = names
    return df


def grouplens_to_canonical(ml100k_dir: Path, out_dir: Path) -> None:
    """Convert the original GroupLens ``ml-100k/`` folder to the canonical folder ``out_dir``."""
    folder = Path(ml100k_dir)
    data_path, user_path, item_path = (_require(folder, n) for n in ("u.data", "u.user", "u.item"))
    data = pd.read_csv(
        data_path, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )
    interactions = _interactions_table(
        data["user_id"], data["item_id"], data["rating"], data["timestamp"]
    )
    users = _users_table(_read_pipe(user_path, USERS_SCHEMA.names))
    genres = _grouplens_genres(folder)
    base = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
    items = _read_pipe(item_path, base + [f"g{i}" for i in range(len(genres))])
    rows = []
    for rec in items.itertuples(index=False):
        # The title's year is the film's year; the release date is often a later (US or
        # video) release, e.g. "Taxi Driver (1976)" has 16-Feb-1996. RecBole uses the same.
        title, year = _split_title_year(rec.title)
        date = rec.release_date.strip()
        if year is None and re.fullmatch(r".*\d{4}", date):
            year = int(date[-4:])
        flags = rec[len(base) :]
        names = [g for g, flag in zip(genres, flags, strict=True) if flag == "1"]
        rows.append((int(rec.item_id), title, year, names))
    _write_canonical(out_dir, users, _items_table(rows), interactions)
