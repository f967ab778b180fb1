"""Run one round of simulated members against a policy and write the feedback log.

    python -m jobs.simulate --catalog runs/catalog --policy most-frequent --out runs/logs/round0

Policies: random (random novel clusters), most-frequent (most frequent next cluster), oracle (the
simulator's own best novel clusters: an upper bound for evaluation only). --out is a feedback-log
folder: new, empty, or one with parts already (the round's parts are appended); a folder of other
files is refused.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from catalog.build import Catalog
from catalog.logs import FeedbackLogWriter
from catalog.outputs import check_output_folder
from jobs.common import merge_config, run_main

POLICIES = ("random", "most-frequent", "oracle")


class SimulateJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str
    out: str
    policy: str = Field("most-frequent", pattern="^(random|most-frequent|oracle)$")
    slate_size: int = Field(10, ge=1, le=200)
    explore_slots: int = Field(2, ge=0)
    content_type: str = "movie"
    seed: int = 0


def make_policy(name: str, catalog: Catalog, simulator):
    from sim import MostFrequentNextCluster, OracleNovelCluster, RandomNovelCluster

    if name == "random":
        return RandomNovelCluster(catalog.n_clusters)
    if name == "most-frequent":
        return MostFrequentNextCluster(catalog.histories)
    if name == "oracle":
        return OracleNovelCluster(simulator)
    raise ValueError(f"policy={name!r}: choose one of {POLICIES}.")


def rates(log: pa.Table) -> dict:
    """Impressions and action rates, overall and per source."""
    src = np.asarray(log["source"].to_pylist())
    out = {"impressions": log.num_rows}
    for part, mask in (
        ("all", np.ones(len(src), bool)),
        ("explore", src == "explore"),
        ("exploit", src == "exploit"),
    ):
        n = int(mask.sum())
        out[part] = {
            "impressions": n,
            **{
                a: float(log[a].to_numpy(zero_copy_only=False)[mask].mean()) if n else 0.0
                for a in ("click", "like", "share", "skip")
            },
        }
    return out


def simulate_round(
    catalog: Catalog,
    simulator,
    policy_name: str,
    out: str,
    *,
    slate_size=10,
    explore_slots=2,
    content_type="movie",
    seed=0,
    policy=None,
) -> dict:
    """One round: `policy` (an object with choose(), e.g. sim.RankedListPolicy) or the named one."""
    from sim import build_impressions

    policy = policy or make_policy(policy_name, catalog, simulator)
    impressions = build_impressions(
        catalog,
        policy,
        slate_size=slate_size,
        explore_slots=explore_slots,
        content_type=content_type,
        timestamp_ms=int(time.time() * 1000),
        seed=seed,
    )
    log = simulator.respond(impressions)
    FeedbackLogWriter(out).append(log)
    return {"policy": policy_name, "out": out, **rates(log)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", help="catalog folder (from jobs.build_catalog or the demo)")
    p.add_argument("--out", help="feedback log folder; parts are appended")
    p.add_argument("--config", help="TOML or JSON with the fields of SimulateJobConfig")
    p.add_argument("--policy", choices=POLICIES)
    p.add_argument("--slate-size", dest="slate_size", type=int)
    p.add_argument("--explore-slots", dest="explore_slots", type=int)
    p.add_argument("--content-type", dest="content_type")
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)

    def body() -> int:
        from sim import MemberSimulator, SimConfig

        cfg = merge_config(
            SimulateJobConfig,
            args,
            ["catalog", "out", "policy", "slate_size", "explore_slots", "content_type", "seed"],
        )
        check_output_folder(cfg.out, ("part-*.parquet",), job="jobs.simulate", what="feedback log")
        t0 = time.perf_counter()
        catalog = Catalog.load(cfg.catalog)
        simulator = MemberSimulator.for_catalog(catalog, SimConfig(seed=cfg.seed))
        s = simulate_round(
            catalog,
            simulator,
            cfg.policy,
            cfg.out,
            slate_size=cfg.slate_size,
            explore_slots=cfg.explore_slots,
            content_type=cfg.content_type,
            seed=cfg.seed,
        )
        print(summary_line(s))
        print(f"wrote {cfg.out} in {time.perf_counter() - t0:.1f}s")
        return 0

    run_main(body)


def summary_line(s: dict) -> str:
    a, e = s["all"], s["explore"]
    return (
        f"{s['policy']:<14} {s['impressions']} impressions: click {a['click']:.3f} like {a['like']:.3f} "
        f"share {a['share']:.3f} skip {a['skip']:.3f} | explore slots ({e['impressions']}): "
        f"click {e['click']:.3f} like {e['like']:.3f}"
    )


if __name__ == "__main__":
    main()
