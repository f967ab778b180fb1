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
from ranking.metrics import auc
from sim import MemberSimulator, MostFrequentNextCluster, SimConfig, build_impressions, fit_affinity


def _pairs(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return table["member_id"].to_numpy(), table["item_id"].to_numpy()


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
    seen, held = split_by_time(load_movielens_100k().interactions, 0.2)
    # the simulator is fitted on every rating, held-out ones included: on the held-out pairs its AUC is
    # in-sample; the same model fitted on the seen part only shows how well it generalises to them
    in_sample = auc(held["rating"].to_numpy() >= 4, simulator.like_probability(*_pairs(held)))
    seen_fit = fit_affinity(seen, simulator.config.affinity)
    known = held.filter(
        pa.array(
            np.isin(held["member_id"].to_numpy(), seen_fit.member_ids)
            & np.isin(held["item_id"].to_numpy(), seen_fit.item_ids)
        )
    )
    out_of_sample = auc(known["rating"].to_numpy() >= 4, seen_fit.like_probability(*_pairs(known)))
    print(
        f"  like AUC on held-out pairs: {in_sample:.3f} in-sample (simulator, fitted on all ratings), "
        f"{out_of_sample:.3f} out-of-sample (fitted on the seen part; {known.num_rows} of {held.num_rows} "
        f"pairs); click rate by position 0..9: {ctr_by_position}"
    )
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
                "held_out_like_auc_in_sample": in_sample,
                "held_out_like_auc_seen_fit": out_of_sample,
                "click_rate_by_position": ctr_by_position,
            },
        }
    ]
