"""Simulated impressions per second: the batched simulator against the same response model applied
one impression at a time (the obvious loop), in the same run. The target is to stay far above what a
ranking endpoint serves (hundreds of requests/s here), so the simulator never limits a load test."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from catalog.build import build_movielens_catalog
from catalog.histories import split_by_time
from catalog.movielens import load_movielens_100k
from sim import MemberSimulator, MostFrequentNextCluster, SimConfig, build_impressions


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-sum AUC of `score` against boolean `label`."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    n_pos = label.sum()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(label) - n_pos)))


def run(quick: bool = False) -> list[dict]:
    catalog = build_movielens_catalog()
    simulator = MemberSimulator.for_catalog(catalog, SimConfig(seed=0))
    base = build_impressions(catalog, MostFrequentNextCluster(catalog.histories), seed=0)
    reps = 10 if quick else 50
    impressions = pa.concat_tables([base] * reps)
    t0 = time.perf_counter()
    log = simulator.respond(impressions)
    batched = log.num_rows / (time.perf_counter() - t0)

    n_loop = 2_000 if quick else 10_000
    one = [base.slice(i % base.num_rows, 1) for i in range(n_loop)]
    t0 = time.perf_counter()
    for row in one:
        simulator.respond(row)
    loop = n_loop / (time.perf_counter() - t0)
    clicks = float(np.mean(log["click"].to_numpy(zero_copy_only=False)))
    click = log["click"].to_numpy(zero_copy_only=False)
    position = log["position"].to_numpy()
    ctr_by_position = [round(float(click[position == k].mean()), 3) for k in range(10)]
    _, held = split_by_time(load_movielens_100k().interactions, 0.2)
    p_like = simulator.like_probability(held["member_id"].to_numpy(), held["item_id"].to_numpy())
    auc = _auc(p_like, held["rating"].to_numpy() >= 4)
    print(f"  held-out like AUC {auc:.3f}; click rate by position 0..9: {ctr_by_position}")
    return [
        {
            "name": "simulated_impressions",
            "value": batched,
            "unit": "impressions/s",
            "baseline": "one impression per call",
            "baseline_value": loop,
            "ratio": batched / loop,
            "ratio_meaning": "speed-up over the baseline",
            "detail": {
                "impressions": log.num_rows,
                "click_rate": clicks,
                "requests_per_s_at_10_per_slate": batched / 10,
            },
        }
    ]
