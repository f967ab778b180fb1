"""Run one round of simulated members against a policy and write the feedback log.

    python -m jobs.simulate --catalog runs/catalog --policy most-frequent --out runs/logs/round0

Policies: random (random novel clusters), most-frequent (most frequent next cluster), oracle (the
simulator's own best novel clusters: an upper bound for evaluation only). --out is a feedback-log
folder: new, empty, or one with parts already (the round's parts are appended); a folder of other
files is refused.
"""

from __future__ import annotations

import time
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from catalog import Catalog, FeedbackLogWriter, check_output_folder
from jobs.cli import job_parser
from jobs.common import merge_config, run_main

Policy = Literal["random", "most-frequent", "oracle"]
POLICIES = get_args(Policy)


class SimulateJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str = Field(description="catalog folder (from jobs.build_catalog or the demo)")
    out: str = Field(description="feedback log folder; parts are appended")
    policy: Policy = Field("most-frequent", description="how the explore slots are filled")
    slate_size: int = Field(10, ge=1, le=200, description="items per slate")
    explore_slots: int = Field(2, ge=0, description="slate positions given to explored clusters")
    content_type: str = Field("movie", description="content type logged with each impression")
    seed: int = Field(0, description="simulator and policy seed")


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
    args = job_parser(SimulateJobConfig, __doc__).parse_args(argv)

    def body() -> int:
        from sim import MemberSimulator, SimConfig

        cfg = merge_config(SimulateJobConfig, args)
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
