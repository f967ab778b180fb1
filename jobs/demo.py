"""The main demo on embedded defaults: local Ray, a real local Redis, MovieLens-100K.

    python -m jobs.demo [--runs runs] [--config demo.toml] [--n-clusters 48] ...

Stages so far: bring up Ray and Redis (or use RAY_ADDRESS / REDIS_URL), build the catalog from
MovieLens-100K (each member's last 20% of ratings held out for the simulator), check from a Ray
worker that the run folder's tables are readable there, fit the member simulator, run round 0 of the
loop (simulated members answer a random and a most-frequent-next-cluster explore policy; feedback
logs under logs/round0/), fine-tune the tiny novelty LLM on members' cluster transitions and evaluate
it with vLLM (novelty/), sample every observed history key with it in a Ray Data job (candidates/),
train the LiRank ranker on MovieLens CTR and on the round-0 feedback logs
(multi-task; checkpoints under ranker/), print a summary, write everything under one run folder, shut
down what it started.

Quiet by default: the stage lines, summaries and the ranker's progress bar on the terminal; what vLLM, Ray,
transformers and torch print goes to <run>/logs/library.log (--verbose: everything on the terminal).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

from pydantic import Field

from catalog import build_movielens_catalog, catalog_summary_lines
from jobs.best_of_n import BestOfNFields
from jobs.best_of_n import run as run_best_of_n
from jobs.best_of_n import summary_lines as best_of_n_summary_lines
from jobs.build_catalog import CatalogFields
from jobs.cli import job_parser
from jobs.common import merge_config, new_run_dir, run_main
from jobs.quiet import library_output, route_ray_worker_output, terminal_stderr
from jobs.sample_novelty import SampleNoveltyFields
from jobs.sample_novelty import sample as sample_novelty
from jobs.sample_novelty import summary_lines as sample_summary_lines
from jobs.services import ray_session, redact, redis_service
from jobs.simulate import simulate_round, summary_line
from jobs.train_alignment import AlignmentTrainFields
from jobs.train_alignment import summary_lines as alignment_summary_lines
from jobs.train_alignment import train as train_alignment
from jobs.train_novelty import NoveltyTrainFields
from jobs.train_novelty import summary_lines as novelty_summary_lines
from jobs.train_novelty import train as train_novelty
from jobs.train_ranker import TrainJobConfig
from jobs.train_ranker import train as train_ranker
from sim import MemberSimulator, SimConfig


class DemoConfig(CatalogFields):
    runs: str = Field("runs", description="parent folder of run folders")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    novelty_steps: int = Field(300, ge=1, description="SFT steps of the tiny novelty LLM")
    novelty_eval_examples: int = Field(500, ge=1, description="held-out transitions in its evaluation")
    slots: int = Field(4, ge=1, description="novel clusters per key to fill; the sampler draws 5x as many")
    traffic_rounds: int = Field(
        24, ge=1, description="rounds of uniform exploration traffic logged for alignment"
    )
    traffic_explore_slots: int = Field(8, ge=1, description="explore slots per slate in that traffic")
    alignment_steps: int = Field(300, ge=1, description="training steps of the alignment model")
    round1_explore_slots: int = Field(
        4, ge=1, description="explore slots per slate when the policies are compared"
    )
    key_limit: int | None = Field(
        None, ge=1, description="bulk jobs sample only the first N keys (smoke runs)"
    )


def _worker_check(histories_path: str, k: int) -> dict:
    """Runs in a Ray worker: reads the histories table the driver wrote and counts history keys."""
    from catalog import history_keys, read_table, schemas

    keys = history_keys(read_table(histories_path, schemas.HISTORIES), k)
    return {"rows": keys.num_rows, "distinct": len({tuple(x) for x in keys["history_key"].to_pylist()})}


def compare_policies(catalog, simulator, run_dir, client, explore_slots: int, seed: int) -> dict:
    """Round 1 of the loop: the same members, four explore policies, each logged under logs/round1/.

    best-of-n reads each member's clusters from the Redis cache (the live version just published);
    novelty-only takes the novelty LLM's most-sampled candidates for the member's key, no alignment."""
    from catalog import read_table, schemas
    from explore.cache import CacheReader
    from sim import RankedListPolicy

    k = catalog.history_k
    members = catalog.histories["member_id"].to_pylist()
    histories = catalog.histories["clusters"].to_pylist()
    keyed = [(m, h) for m, h in zip(members, histories, strict=True) if len(h) >= k]
    hits = CacheReader(client, k=k).lookup_many([h[-k:] for _, h in keyed], excludes=[h for _, h in keyed])
    cands = read_table(run_dir / "candidates" / "candidates", schemas.NOVELTY_CANDIDATES)
    by_key = dict(
        zip(map(tuple, cands["history_key"].to_pylist()), cands["candidates"].to_pylist(), strict=True)
    )
    policies = {
        "random": None,
        "most-frequent": None,
        "novelty-only": RankedListPolicy({m: by_key.get(tuple(h[-k:]), []) for m, h in keyed}),
        "best-of-n": RankedListPolicy(
            {m: list(hit.clusters) for (m, _), hit in zip(keyed, hits, strict=True)}
        ),
    }
    rates, lines = {}, []
    for name, policy in policies.items():
        s = simulate_round(
            catalog,
            simulator,
            name,
            str(run_dir / "logs" / "round1" / name),
            explore_slots=explore_slots,
            seed=seed + 7,
            policy=policy,
        )
        e = s["explore"]
        rates[name] = e
        lines.append(
            f"round 1 {name:<14} explore slots ({e['impressions']}): click {e['click']:.3f} like {e['like']:.3f} "
            f"share {e['share']:.3f} skip {e['skip']:.3f}"
        )
    levels = {lvl: sum(h.level == lvl for h in hits) for lvl in ("exact", "backoff", "global", "miss")}
    lines.append(f"cache lookups for {len(hits)} members: {levels}")
    return {"rates": rates, "levels": levels, "lines": lines}


def endpoint_round(catalog, simulator, run_dir, explore_slots: int, in_process: dict | None = None) -> dict:
    """Start the ranking app on this run (jobs.serve's config), have every member with a history key
    request a slate over HTTP, let the simulator answer them through POST /feedback, join the endpoint's
    impression and events logs into the round's feedback log (logs/round1/endpoint/), and report the
    endpoint's latency and the explore slots' rates next to the in-process best-of-n arm."""
    import numpy as np
    from ray import serve

    from catalog import FeedbackLogWriter, read_impression_log
    from jobs.loop import serve_traffic
    from jobs.serve import ServeJobConfig, build_config, check_ranker, quiet_logs, run_paths
    from jobs.services import free_port
    from jobs.simulate import rates
    from serving import deploy, logger_flush, rank_many

    quiet_logs(verbose=False)
    paths = {k: v.resolve() for k, v in run_paths(run_dir).items()}
    check_ranker(paths["catalog"], paths["ranker"])
    cfg = ServeJobConfig(run=str(run_dir), port=free_port())
    config = build_config(cfg, paths)  # the replicas read REDIS_URL from the local Ray's environment
    deploy(config)
    base = f"http://127.0.0.1:{config['http_options']['port']}"
    try:
        k = catalog.history_k
        members = [
            m
            for m, h in zip(
                *(catalog.histories[c].to_pylist() for c in ("member_id", "clusters")), strict=True
            )
            if len(h) >= k
        ]
        bodies = [{"member_id": m, "k": 10, "explore_slots": explore_slots} for m in members]
        warm, _ = rank_many(base, bodies[:16], concurrency=4)  # warm-up: replicas, connections
        # the round's feedback as production gets it: the endpoint's logs joined with what clients sent
        traffic = serve_traffic(base, simulator, bodies, paths, clients=4)
        answers = traffic["answers"]
        served = sum(len(a["items"]) for a in warm + answers if isinstance(a, dict))
        stats = logger_flush(min_rows=served)  # the warm-up's rows too
    finally:
        serve.shutdown()  # the demo's own local Ray
    log, latency, joined = traffic["feedback"], traffic["latency"], traffic["joined"]
    sent, feedback_s = traffic["events_sent"], traffic["feedback_s"]
    FeedbackLogWriter(run_dir / "logs" / "round1" / "endpoint").append(log)
    logged = read_impression_log(paths["impressions"]).num_rows
    lat = np.array(latency)
    r = rates(log)
    e = r["explore"]
    levels = {}
    for a in answers:
        levels[a["exploration"]["level"]] = levels.get(a["exploration"]["level"], 0) + 1
    server = np.array([a["timings_ms"]["rank"] for a in answers])
    lines = [
        f"endpoint {base}: {len(answers)} requests from 4 clients, p50 {np.percentile(lat, 50):.1f} ms, "
        f"p99 {np.percentile(lat, 99):.1f} ms (ranker call p50 {np.percentile(server, 50):.1f} ms); "
        f"{logged} impressions logged ({stats['parts']} parts); cache levels {levels}",
        f"feedback: {sent} engagement events posted to /feedback by 4 clients in {feedback_s:.1f}s "
        f"({stats['events']['rows_written']} logged), joined with the impressions into {log.num_rows} feedback "
        f"rows ({joined['engaged_impressions']} engaged, none set aside)",
        f"round 1 best-of-n via endpoint explore slots ({e['impressions']}): click {e['click']:.3f} like "
        f"{e['like']:.3f} share {e['share']:.3f} skip {e['skip']:.3f}"
        + (
            f" (in process, most-rated item per cluster: like {in_process['like']:.3f})" if in_process else ""
        ),
    ]
    return {
        "requests": len(answers),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        "impressions_served": served,
        "impressions_logged": logged,
        "feedback_events": sent,
        "joined": joined,
        "levels": levels,
        "rates": r,
        "lines": lines,
    }


def _point_latest(run_dir: Path) -> None:
    """<runs>/latest -> this run (what `make serve` and serve_config.yaml use)."""
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        print(f"  {link} is not a link made by the demo; left as it is")
        return
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


class Stages:
    """Times named stages and prints one line per stage."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        print(f"[{name}] done in {self.timings[name]:.1f}s", flush=True)
        return out


def main(argv: list[str] | None = None) -> None:
    p = job_parser(DemoConfig, __doc__)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="library output (vLLM, Ray, transformers) on the terminal, not in <run>/logs/library.log",
    )
    args = p.parse_args(argv)

    def body() -> int:
        import ray

        cfg = merge_config(DemoConfig, args)
        run_dir = new_run_dir(cfg.runs, "demo")
        stages = Stages()
        summary: dict = {"run_dir": str(run_dir), "config": cfg.model_dump()}
        with ExitStack() as stack:
            # first in, last out: the library log covers Redis and Ray from start to shutdown
            library_log = stack.enter_context(
                library_output(run_dir / "logs" / "library.log", verbose=args.verbose)
            )
            # Redis keeps its data in the run folder (redis/dump.rdb, saved after the cache is published), so
            # `python -m jobs.serve --run` serves the same cache later
            redis_h = stages.run(
                "redis", lambda: stack.enter_context(redis_service(data_dir=run_dir / "redis"))
            )
            if redis_h.server is not None and not os.environ.get("RAY_ADDRESS"):
                os.environ["REDIS_URL"] = redis_h.url  # a local Ray passes it on to the endpoint's replicas
            ray_s = stages.run("ray", lambda: stack.enter_context(ray_session(num_cpus=cfg.num_cpus)))
            if ray_s.initialized_here:
                route_ray_worker_output()  # workers' stdout (vLLM in Ray Data actors) to the library log
            summary["services"] = {
                "ray": {
                    "address": ray_s.address,
                    "started_here": ray_s.started_here,
                    "cpus": ray.cluster_resources().get("CPU", 0),
                },
                "redis": {
                    "url": redact(redis_h.url) if redis_h.server else "REDIS_URL",
                    "version": redis_h.version(),
                    "started_here": redis_h.server is not None,
                },
            }
            print(
                f"  ray: {ray_s.address} ({summary['services']['ray']['cpus']:.0f} CPUs); redis "
                f"{summary['services']['redis']['version']} at {summary['services']['redis']['url']}"
            )

            catalog_dir = run_dir / "catalog"
            catalog = stages.run("catalog", build_movielens_catalog, cfg.catalog_config())
            catalog.save(catalog_dir)
            for line in catalog_summary_lines(catalog):
                print("  " + line)
            summary["catalog"] = {
                "path": str(catalog_dir),
                **catalog.manifest["counts"],
                "coverage": catalog.manifest["coverage"],
            }

            check = stages.run(
                "ray-read-check",
                lambda: ray.get(
                    ray.remote(num_cpus=0.5)(_worker_check).remote(
                        str((catalog_dir / "histories.parquet").resolve()), cfg.history_k
                    )
                ),
            )
            expected = catalog.manifest["coverage"]["members_with_key"]
            if check["rows"] != expected:
                raise RuntimeError(
                    f"a Ray worker read {check['rows']} history keys, the driver wrote {expected}"
                )
            print(
                f"  a Ray worker read the run folder back: {check['rows']} history keys, "
                f"{check['distinct']} distinct"
            )

            # round 0 of the loop: simulated members answer baseline explore policies
            simulator = stages.run(
                "simulator", MemberSimulator.for_catalog, catalog, SimConfig(seed=cfg.seed)
            )
            summary["round0"] = {}
            for policy in ("random", "most-frequent"):
                s = stages.run(
                    f"round0-{policy}",
                    simulate_round,
                    catalog,
                    simulator,
                    policy,
                    str(run_dir / "logs" / "round0" / policy),
                    seed=cfg.seed,
                )
                summary["round0"][policy] = s
                print("  " + summary_line(s))

            # the novelty LLM: fine-tune the tiny preset on members' transitions, evaluate it with vLLM,
            # then sample every observed history key in a Ray Data job
            novelty_dir = run_dir / "novelty"
            report = stages.run(
                "novelty-train",
                train_novelty,
                NoveltyTrainFields(
                    catalog=str(catalog_dir),
                    max_steps=cfg.novelty_steps,
                    eval_n=5 * cfg.slots,
                    eval_examples=cfg.novelty_eval_examples,
                    seed=cfg.seed,
                ),
                novelty_dir,
                progress=False,
            )
            for line in novelty_summary_lines(report):
                print("  " + line)
            sampled = stages.run(
                "novelty-sample",
                sample_novelty,
                SampleNoveltyFields(
                    catalog=str(catalog_dir),
                    model=str(novelty_dir),
                    slots=cfg.slots,
                    seed=cfg.seed,
                    limit=cfg.key_limit,
                ),
                run_dir / "candidates",
            )
            for line in sample_summary_lines(sampled):
                print("  " + line)
            summary["novelty"] = {
                "path": str(novelty_dir),
                "heldout_loss": [report["heldout_loss_before"], report["heldout_loss_after"]],
                "evaluation": report["evaluation"],
                "sampling": sampled,
            }

            # exploration traffic: members answer uniformly random novel clusters, the logs the alignment
            # model learns from (in production: the explore slots' logged feedback)
            traffic_dir = run_dir / "logs" / "explore"
            traffic = stages.run(
                "explore-traffic",
                lambda: [
                    simulate_round(
                        catalog,
                        simulator,
                        "random",
                        str(traffic_dir),
                        explore_slots=cfg.traffic_explore_slots,
                        seed=cfg.seed + 1000 + r,
                    )
                    for r in range(cfg.traffic_rounds)
                ],
            )
            print(
                f"  {cfg.traffic_rounds} rounds, {sum(t['explore']['impressions'] for t in traffic)} explore "
                f"impressions logged in {traffic_dir}"
            )
            # the alignment LLM: aggregate that feedback per (key, cluster); warm-start from the novelty LLM
            aligned = stages.run(
                "alignment-train",
                train_alignment,
                AlignmentTrainFields(
                    catalog=str(catalog_dir),
                    logs=[str(traffic_dir)],
                    candidates=str(run_dir / "candidates" / "candidates"),
                    base=str(novelty_dir),
                    method="full",
                    max_steps=cfg.alignment_steps,
                    seed=cfg.seed,
                ),
                run_dir / "alignment",
                progress=False,
            )
            for line in alignment_summary_lines(aligned):
                print("  " + line)
            # the main job: every observed key -> novelty samples -> alignment scores -> best-of-n -> Redis
            bon = stages.run(
                "best-of-n",
                run_best_of_n,
                BestOfNFields(
                    catalog=str(catalog_dir),
                    novelty=str(novelty_dir),
                    alignment=str(run_dir / "alignment"),
                    slots=cfg.slots,
                    seed=cfg.seed,
                    limit=cfg.key_limit,
                ),
                run_dir / "best-of-n",
                redis_h.url,
            )
            for line in best_of_n_summary_lines(bon):
                print("  " + line)
            if redis_h.server is not None:
                redis_h.server.save()
            round1 = stages.run(
                "round1",
                compare_policies,
                catalog,
                simulator,
                run_dir,
                redis_h.client,
                cfg.round1_explore_slots,
                cfg.seed,
            )
            for line in round1["lines"]:
                print("  " + line)
            summary["alignment"] = {"path": str(run_dir / "alignment"), **aligned}
            summary["best_of_n"] = bon
            summary["round1"] = round1["rates"]

            # the LiRank ranker: MovieLens CTR, then the multi-task feedback logs of round 0
            summary["ranker"] = {}
            jobs = {
                "movielens": TrainJobConfig(
                    out=str(run_dir / "ranker" / "movielens"), catalog=str(catalog_dir)
                ),
                "feedback": TrainJobConfig(
                    out=str(run_dir / "ranker" / "feedback"),
                    catalog=str(catalog_dir),
                    dataset="feedback",
                    logs=[str(run_dir / "logs" / "round0" / p) for p in ("random", "most-frequent")],
                    ranker={"task_groups": [["click", "like", "share"], ["skip"], ["long_dwell"]]},
                ),
            }
            for name, job in jobs.items():
                with terminal_stderr():  # its progress bar
                    m = stages.run(f"ranker-{name}", train_ranker, job)
                summary["ranker"][name] = {
                    "path": job.out,
                    "auc": {t: round(v["auc"], 4) for t, v in m["tasks"].items()},
                    "popularity_auc": {t: round(v["auc"], 4) for t, v in m["popularity_baseline"].items()},
                    "ece": {t: round(v["ece"], 4) for t, v in m["tasks"].items()},
                    "examples_per_s": m["train"]["examples_per_s"],
                }
            # the endpoint: the round-1 best-of-n arm again, through Ray Serve over HTTP, the ranker choosing
            # the items inside each cluster
            if os.environ.get("RAY_ADDRESS"):
                print(
                    "[serve] skipped on a remote Ray: its replicas need REDIS_URL in the cluster's environment; run "
                    f"`python -m jobs.serve --run {run_dir}` there instead"
                )
                served = None
            else:
                served = stages.run(
                    "serve",
                    endpoint_round,
                    catalog,
                    simulator,
                    run_dir,
                    cfg.round1_explore_slots,
                    round1["rates"].get("best-of-n"),
                )
                for line in served["lines"]:
                    print("  " + line)
                summary["serve"] = {k: v for k, v in served.items() if k != "lines"}
        summary["timings_s"] = stages.timings
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _point_latest(run_dir)
        print(f"demo finished in {sum(stages.timings.values()):.1f}s; outputs in {run_dir}")
        if library_log is not None:
            print(f"library output (vLLM, Ray, transformers) in {library_log}; --verbose shows it here")
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
