"""Benchmark of the baselines at catalogue scale: fit + validation scoring time and peak memory
of popularity, recent popularity, a capped EASE and ItemKNN, with ItemKNN's sparse
neighbours (``towers.itemknn``) against the dense co-occurrence blocks they replaced
(:func:`dense_top_neighbours`, kept here only as the "before").

Each dataset folder (users/items/interactions parquet) is split by time: fitted on the
events before the 80th timestamp percentile, scored on the users of the next 10% (at most
``MAX_VAL_USERS`` of them, as ``towers.baseline_scores`` chooses). Every (dataset, baseline,
repeat) runs in a fresh process, before and after alternating; peak memory is the process's
peak RSS above its RSS once the data are loaded.

    python benchmarks/bench_baselines.py --datasets /work/ml100k /tmp/ds10k --repeats 3
    python benchmarks/bench_baselines.py --datasets /work/ml100k --check  # dense == sparse

``--check`` asserts, for every (k, shrink) of ItemKNN's grid, that each item keeps the same
multiset of neighbour similarities both ways (the neighbours themselves differing only among
values tied with the k-th), and prints the largest gap between their validation metrics.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

# First: recsys's BLAS thread setting must precede numpy's loading.
import recsys  # noqa: E402, F401

# isort: split
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from towers.baselines import MAX_VAL_USERS, Popularity, sample_users  # noqa: E402
from towers.ease import EASE, EASE_MAX_ITEMS  # noqa: E402
from towers.evaluate import EvalSplit, build_eval_split, rank_metrics  # noqa: E402
from towers.itemknn import (  # noqa: E402
    BLOCK_BYTES,
    KNN_NEIGHBOURS,
    KNN_SHRINKS,
    ItemKNN,
    neighbour_weights,
    top_neighbours,
)

CASES = (
    "popularity",
    "popularity (recent)",
    "EASE",
    "ItemKNN dense",
    "ItemKNN sparse",
    "ItemKNN grid dense",
    "ItemKNN grid sparse",
)


def dense_top_neighbours(
    x: sp.csr_matrix, k: int, shrink: float, block_bytes: int = BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """The "before": (N, k) neighbours and similarities from dense (N, block) slices of XᵀX,
    O(N²) time and cells (zero similarities kept as zeros)."""
    n = x.shape[1]
    k = min(k, max(n - 1, 0))
    xc = sp.csc_matrix(x, dtype=np.float32)
    xt = sp.csr_matrix(xc.T)
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())  # (N,)
    idx, sim = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    step = max(1, block_bytes // (16 * max(n, 1)))
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        c = np.asarray((xt @ xc[:, lo:hi]).toarray(), np.float32)  # (N, b)
        c /= norms[:, None] * norms[None, lo:hi] + shrink + 1e-12
        c[np.arange(lo, hi), np.arange(hi - lo)] = -np.inf
        top = np.argpartition(-c, k - 1, axis=0)[:k]  # (k, b)
        vals = np.take_along_axis(c, top, axis=0)
        order = np.argsort(-vals, axis=0, kind="stable")
        idx[lo:hi] = np.take_along_axis(top, order, axis=0).T
        sim[lo:hi] = np.take_along_axis(vals, order, axis=0).T
    return idx, sim


def dense_weights(idx: np.ndarray, sim: np.ndarray, k: int) -> sp.csr_matrix:
    """W (N, N) from the dense lists' first ``k`` neighbours, zeros dropped."""
    n, k = len(idx), min(k, idx.shape[1])
    rows, cols, vals = idx[:, :k].ravel(), np.repeat(np.arange(n), k), sim[:, :k].ravel()
    keep = vals > 0
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32)


def load(folder: Path) -> tuple[pd.DataFrame, np.ndarray, EvalSplit]:
    """Events before the validation window, the catalogue, and the validation split."""
    events = pd.read_parquet(folder / "interactions.parquet",
                             columns=["user_id", "item_id", "event_timestamp"])  # fmt: skip
    items = pd.read_parquet(folder / "items.parquet", columns=["item_id"])
    item_ids = np.sort(items["item_id"].to_numpy(np.int64))
    when = pd.to_datetime(events["event_timestamp"], utc=True)
    start, end = when.quantile(0.8), when.quantile(0.9)
    val = sample_users(build_eval_split(events, item_ids, start, end), MAX_VAL_USERS)
    return events[when < start], item_ids, val


def fit_and_score(case: str, before: pd.DataFrame, item_ids: np.ndarray, val: EvalSplit) -> dict:
    """Fit one baseline at its default setting (ItemKNN grid: the neighbour lists of every
    shrink of the grid, as the search computes them) and score the validation split."""
    if case.startswith("popularity"):
        days = 30.0 if case == "popularity (recent)" else None
        model = Popularity(days).fit(before, item_ids, before=val.start)
    elif case == "EASE":
        model = EASE(500.0, top_items=min(EASE_MAX_ITEMS, len(item_ids))).fit(before, item_ids)
    elif case.startswith("ItemKNN grid"):  # the neighbour lists itemknn_search computes
        model = ItemKNN(max(KNN_NEIGHBOURS), KNN_SHRINKS[0])
        model._history(before, item_ids)
        if case.endswith("sparse"):
            lists = top_neighbours(model.matrix_, model.k, KNN_SHRINKS)
            model.weights_ = neighbour_weights(lists[0], model.k)
        else:
            dense = [dense_top_neighbours(model.matrix_, model.k, s) for s in KNN_SHRINKS]
            model.weights_ = dense_weights(*dense[0], model.k)
    else:
        model = ItemKNN(KNN_NEIGHBOURS[1], KNN_SHRINKS[0])
        if case == "ItemKNN sparse":
            model.fit(before, item_ids)
        else:
            model._history(before, item_ids)
            idx, sim = dense_top_neighbours(model.matrix_, model.k, model.shrink)
            model.weights_ = dense_weights(idx, sim, model.k)
    fitted = time.perf_counter()
    recall = rank_metrics(model.score_fn(val), val, ks=(20,))["all"]["recall@20"]
    return {"fitted": fitted, "recall@20": round(recall, 4)}


def measure(folder: Path, case: str) -> dict:
    """One measurement, in this (fresh) process."""
    before, item_ids, val = load(folder)
    rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    out = fit_and_score(case, before, item_ids, val)
    end = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"dataset": folder.name, "items": len(item_ids), "case": case,
            "fit_s": round(out["fitted"] - start, 3), "score_s": round(end - out["fitted"], 3),
            "peak_mb": round(max(0, peak - rss) / 2**20, 1), "val_users": len(val.user_ids),
            "recall@20": out["recall@20"]}  # fmt: skip


def check(folder: Path) -> None:
    """Sparse and dense ItemKNN agree on every (k, shrink) of the grid (see the docstring)."""
    before, item_ids, val = load(folder)
    model = ItemKNN()
    model._history(before, item_ids)
    lists = top_neighbours(model.matrix_, max(KNN_NEIGHBOURS), KNN_SHRINKS)
    for shrink, nb in zip(KNN_SHRINKS, lists, strict=True):
        idx, sim = dense_top_neighbours(model.matrix_, max(KNN_NEIGHBOURS), shrink)
        for k in KNN_NEIGHBOURS:
            sparse, dense = neighbour_weights(nb, k).tocsc(), dense_weights(idx, sim, k).tocsc()
            tied = 0  # items whose neighbours differ, only among values equal to their k-th
            for j in range(len(item_ids)):
                cut = slice(sparse.indptr[j], sparse.indptr[j + 1])
                other = slice(dense.indptr[j], dense.indptr[j + 1])
                a, b = sparse.data[cut], dense.data[other]
                assert np.array_equal(np.sort(a), np.sort(b)), f"k={k} shrink={shrink}: item {j}"
                ia, ib = sparse.indices[cut], dense.indices[other]
                odd = np.concatenate([a[~np.isin(ia, ib)], b[~np.isin(ib, ia)]])
                assert (odd == a.min(initial=np.inf)).all(), f"item {j}: not a tie at the k-th"
                tied += bool(len(odd))
            metrics = []
            for w in (sparse, dense):
                model.weights_ = w.tocsr()
                metrics.append(rank_metrics(model.score_fn(val), val)["all"])
            gap = max(abs(metrics[0][m] - metrics[1][m]) for m in metrics[0])
            print(json.dumps({"k": k, "shrink": shrink, "same_similarities": True,
                              "items_tied_at_kth": tied, "nnz": sparse.nnz,
                              "recall@20": [round(m["recall@20"], 6) for m in metrics],
                              "max_metric_gap": gap}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, nargs="+", required=True)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="dense == sparse, then exit")
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), args.one[1])), flush=True)
        return
    if args.check:
        for folder in args.datasets:
            check(folder)
        return
    for folder in args.datasets:
        for r in range(args.repeats):
            # Before and after alternate, and swap order each repeat.
            cases = args.cases if r % 2 == 0 else args.cases[::-1]
            for case in cases:
                cmd = [sys.executable, __file__, "--datasets", str(folder),
                       "--one", str(folder), case]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    print(json.dumps({"dataset": folder.name, "case": case,
                                      "error": out.stderr.strip()[-500:]}), flush=True)  # fmt: skip
                else:
                    print(json.dumps({"repeat": r, **json.loads(out.stdout)}), flush=True)


if __name__ == "__main__":
    main()
