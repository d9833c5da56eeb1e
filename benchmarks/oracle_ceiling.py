"""How much of the planted oracle's recall@20 any model could reach, on a finished synthetic
backtest (``recsys backtest --dataset synthetic --out BT``).

The backtest's oracle ranks items by the planted ``log_pop + u . v / T`` with the user's true
factor ``u``, which no model sees. What a model sees is the user's profile and the events
before the cut (for "new after 5" users, their first 5 events). This script ranks items by
the Bayes posterior predictive from exactly that, with the planted world known:

- the user's archetype ``k`` (512 of them at 100K interactions) is unknown; its prior is the
  archetypes' share of the users;
- the history's likelihood is ``prod_j P(item_j | k)``, the generator's own softmax;
- the profile's likelihood ``P(age, gender, occupation, zip region | k)`` is estimated by
  drawing ``--draws`` profiles per archetype the way ``recsys.datasets.synthetic`` does;
- items are ranked by ``sum_k P(k | seen) P(item | k)``.

For the next event no model can do better on average (up to the Monte Carlo error of the
profile term); for a window's several events the best ranking differs slightly, since the
number of events is unknown. So it estimates each group's ceiling, against which the
two-tower's share of the oracle is read.

    python benchmarks/oracle_ceiling.py --backtest BT [--synthetic-seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from evaluation.backtest_cut import new_user_split
from recsys.datasets.planted import TEMPERATURE, build_world, planted_affinity, truth_of
from recsys.datasets.synthetic import FEATURE_NOISE, OCCUPATIONS, _users_table
from towers.evaluate import build_eval_split, per_user_metrics

AGES = np.arange(18, 71)  # the generator clips ages to [18, 70]
REGIONS = 10  # the zip code's first digit


def counts(events: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(U, I) events of each user on each item."""
    table = pd.crosstab(events.user_id, events.item_id)
    return table.reindex(index=users, columns=items, fill_value=0).to_numpy(np.float64)


class Ceiling:
    def __init__(self, dataset: Path, seed: int, dim: int, days: int, draws: int) -> None:
        self.users = pd.read_parquet(dataset / "users.parquet").set_index("user_id")
        self.items = np.sort(pd.read_parquet(dataset / "items.parquet").item_id.to_numpy())
        n_users, n_items = len(self.users), len(self.items)
        self.world = w = build_world(np.random.default_rng([seed, 0]), n_users, n_items, dim, days)
        # The world is the dataset's: the profiles it generates are the stored ones.
        regenerated = _users_table(np.random.default_rng([seed, 1]), w).to_pandas()
        if not (regenerated.occupation.to_numpy() == self.users.occupation.to_numpy()).all():
            raise SystemExit(
                f"{dataset}: not the synthetic dataset of seed {seed} (profiles differ)"
            )
        arch = w.arch_factors.astype(np.float64)
        logits = w.item_log_pop[None, :] + arch @ w.item_factors.T.astype(np.float64) / TEMPERATURE
        self.log_p = (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))[
            :, self.items - 1
        ]
        self.p = np.exp(self.log_p)  # (K, I) P(item | archetype)
        self.log_prior = np.log(np.bincount(w.user_arch, minlength=len(arch)) / n_users)
        self.log_profile = self._profile_table(seed, dim, draws)

    def _profile_table(self, seed: int, dim: int, draws: int) -> np.ndarray:
        """(K, occupation, region, age, gender) log P(profile | archetype), by simulation."""
        w = self.world
        rng = np.random.default_rng([seed, 1])  # _users_table's generator: its first draw
        proj32 = rng.standard_normal((dim, len(OCCUPATIONS) + REGIONS + 2)).astype(np.float32)
        proj = proj32.astype(np.float64)  # float32 as drawn there, computed in float64 here
        # Age and gender are z-scored over the population: its mean and spread, drawn as there.
        noise = FEATURE_NOISE * (rng.standard_normal((len(w.user_arch), dim)) * dim**-0.25)
        s = (w.arch_factors[w.user_arch] + noise.astype(np.float32)).astype(np.float64) @ proj
        mu, sd = s[:, -2:].mean(0), s[:, -2:].std(0) + 1e-9
        draw = np.random.default_rng(7)
        table = np.zeros((len(w.arch_factors), len(OCCUPATIONS), REGIONS, len(AGES), 2))
        for k, centre in enumerate(w.arch_factors.astype(np.float64)):
            f = centre + FEATURE_NOISE * draw.standard_normal((draws, dim)) * dim**-0.25
            s = f @ proj
            occ, region = s[:, : len(OCCUPATIONS)].argmax(1), s[:, len(OCCUPATIONS) : -2].argmax(1)
            age_mean = 38 + 8 * (s[:, -2] - mu[0]) / sd[0]
            p_age = norm.pdf(AGES[None, :], age_mean[:, None], 5.0)  # (draws, ages)
            p_age[:, 0], p_age[:, -1] = norm.cdf(18.5, age_mean, 5.0), norm.sf(69.5, age_mean, 5.0)
            male = norm.sf(0.0, (s[:, -1] - mu[1]) / sd[1], 0.5)
            p_gender = np.stack([1 - male, male], 1)  # (draws, 2): F, M
            np.add.at(table[k], (occ, region), p_age[:, :, None] * p_gender[:, None, :] / draws)
        return np.log(table + 1e-12)

    def scores(self, user_ids: np.ndarray, seen: np.ndarray, profile: bool) -> np.ndarray:
        """(U, I) log posterior predictive given the seen counts (U, I) and the profile."""
        ll = seen @ self.log_p.T + self.log_prior[None, :]  # (U, K)
        if profile:
            u = self.users.loc[user_ids]
            occ = pd.Index(OCCUPATIONS).get_indexer(u.occupation)
            region = u.zip_code.astype(int).to_numpy() // 10_000
            age = np.clip(u.age.to_numpy(np.int64), 18, 70) - 18
            male = (u.gender == "M").to_numpy(np.int64)
            ll = ll + self.log_profile[:, occ, region, age, male].T
        post = np.exp(ll - ll.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        return np.log(post @ self.p + 1e-300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backtest", type=Path, required=True, help="a synthetic backtest's --out")
    parser.add_argument("--synthetic-seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=16, help="the generator's factor dimension")
    parser.add_argument("--days", type=int, default=365, help="the generator's span")
    parser.add_argument("--draws", type=int, default=3000, help="profiles drawn per archetype")
    args = parser.parse_args()
    summary = json.loads((args.backtest / "backtest.json").read_text())
    dataset = Path(summary["dataset"])
    ceiling = Ceiling(dataset, args.synthetic_seed, args.dim, args.days, args.draws)
    truth, items = truth_of(ceiling.world), ceiling.items
    events = pd.read_parquet(dataset / "interactions.parquet")
    when = pd.to_datetime(events.event_timestamp, utc=True)
    new_group = summary["config"].get("new_user_history", 5)
    rows: dict[str, list[list[float]]] = {}
    for w in summary["windows"]:
        cut, end = pd.Timestamp(w["cut"]), pd.Timestamp(w["end"])
        test = build_eval_split(events, items, cut, end)
        seen = counts(events[when < cut], test.user_ids, items)
        new, given = new_user_split(events, items, test, new_group)
        for group, split, history, mask in (
            ("warm", test, seen, test.warm), ("cold", test, seen, ~test.warm),
            (f"new after {new_group}", new, counts(given, new.user_ids, items), None),
        ):  # fmt: skip
            ranked = [planted_affinity(truth, split.user_ids, items),
                      ceiling.scores(split.user_ids, history, profile=False),
                      ceiling.scores(split.user_ids, history, profile=True)]  # fmt: skip
            recall = [per_user_metrics(s, split, (20,))["recall@20"] for s in ranked]
            keep = np.ones(len(split.user_ids), bool) if mask is None else mask
            rows.setdefault(group, []).append([float(r[keep].mean()) for r in recall])
        print(
            f"window {w['index']}: "
            + ", ".join(f"{g} {' / '.join(f'{v:.3f}' for v in r[-1])}" for g, r in rows.items()),
            flush=True,
        )
    print(
        "\n| group | oracle | ceiling: history | ceiling: profile + history | two-tower "
        "| two-tower / oracle | two-tower / ceiling |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for group, values in rows.items():
        oracle, hist, full = np.mean(values, axis=0)
        tower = summary["mean"]["two-tower"][group]["recall@20"]["mean"]
        print(
            f"| {group} | {oracle:.3f} | {hist:.3f} ({hist / oracle:.0%}) | {full:.3f} "
            f"({full / oracle:.0%}) | {tower:.3f} | {tower / oracle:.0%} | {tower / full:.0%} |"
        )


if __name__ == "__main__":
    main()
