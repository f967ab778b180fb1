"""The main demo on embedded defaults: local Ray, a real local Redis, MovieLens-100K.

    python -m jobs.demo [--runs runs] [--config demo.toml] [--n-clusters 48] ...

Stages: bring up Ray and Redis (or use RAY_ADDRESS / REDIS_URL), build the catalog from MovieLens-100K
(each member's last 20% of ratings held out for the simulator), check from a Ray worker that the run
folder's tables are readable there, fit the member simulator, round 0 (simulated members answer a random
and a most-frequent-next-cluster explore policy; logs/round0/), fine-tune the tiny novelty LLM on members'
cluster transitions and evaluate it with vLLM (novelty/), sample every observed history key with it in a
Ray Data job (candidates/), log uniform exploration traffic (logs/explore/), train the alignment model on
it (alignment/), the main job: best-of-n over --samples novelty samples per key, published to Redis
(best-of-n/), compare the explore policies in process (logs/round1/), train the LiRank ranker on MovieLens
CTR and on the round-0 logs (ranker/), then --loop-rounds rounds of the closed loop through the Ray Serve
endpoint (jobs.loop: slates over HTTP, POST /feedback, retrained models served live; loop/round-NN/) and
the report (jobs.report: the exploration operating curve and the per-round tables; report/). Everything
goes under one run folder; what the demo started is shut down at the end.

Quiet by default: the stage lines, summaries and the ranker's progress bar on the terminal; what vLLM, Ray,
transformers and torch print goes to <run>/logs/library.log (--verbose: everything on the terminal).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from pydantic import Field

from catalog import build_movielens_catalog, catalog_summary_lines
from jobs.best_of_n import BestOfNFields
from jobs.best_of_n import run as run_best_of_n
from jobs.best_of_n import summary_lines as best_of_n_summary_lines
from jobs.build_catalog import CatalogFields
from jobs.cli import job_parser
from jobs.common import merge_config, new_run_dir, run_main
from jobs.loop import LoopConfig
from jobs.loop import loop as run_loop
from jobs.quiet import library_output, route_ray_worker_output, terminal_stderr
from jobs.sample_novelty import SampleNoveltyFields
from jobs.sample_novelty import sample as sample_novelty
from jobs.sample_novelty import summary_lines as sample_summary_lines
from jobs.services import ray_session, redact, redis_service, redis_url_for_replicas
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
    novelty_rag: bool = Field(
        False,
        description="train and sample the novelty LLM with retrieval-augmented prompts (jobs.train_novelty --rag)",
    )
    novelty_rag_top: int = Field(10, ge=1, description="retrieved clusters per novelty prompt (with RAG)")
    force_gates: bool = Field(
        True,
        description="publish the demo's cache even when a release gate fails (recorded in the version's meta; "
        "--no-force-gates: refuse as the main job does)",
    )
    slots: int = Field(4, ge=1, description="novel clusters per key to fill; the sampler draws 5x as many")
    traffic_rounds: int = Field(
        24, ge=1, description="rounds of uniform exploration traffic logged for alignment"
    )
    traffic_explore_slots: int = Field(8, ge=1, description="explore slots per slate in that traffic")
    alignment_steps: int = Field(300, ge=1, description="training steps of the alignment model")
    alignment_prior: Literal["none", "candidate", "key_offset"] = Field(
        "key_offset",
        description="the baseline the alignment LM corrects (jobs.train_alignment --prior; key_offset: the "
        "candidate's global rate plus the key's offset)",
    )
    round1_explore_slots: int = Field(
        4, ge=1, description="explore slots per slate when the policies are compared"
    )
    key_limit: int | None = Field(
        None, ge=1, description="bulk jobs sample only the first N keys (smoke runs)"
    )
    ranker_preset: Literal["tiny", "default", "paper"] = Field(
        "default", description="the rankers' model size"
    )
    ranker_epochs: int | None = Field(
        None, ge=1, description="the rankers' passes over their data (default 2)"
    )
    samples: int = Field(
        32, ge=1, description="novelty samples per key in the main job (the report's largest best-of-n)"
    )
    decoding: Literal["sample", "top", "distinct"] = Field(
        "sample",
        description="how the novelty LLM's candidates are drawn, in its evaluation, its sampling job, the main job "
        "and the loop (jobs.best_of_n --decoding)",
    )
    loop_rounds: int = Field(
        1, ge=0, description="rounds of the closed loop through the endpoint (jobs.loop) after the demo"
    )
    loop_members: int = Field(
        400,
        ge=1,
        description="members asking the endpoint for slates per loop round (at most all with a key)",
    )
    loop_alignment_steps: int = Field(50, ge=1, description="warm-started alignment steps per loop round")


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
            stack.enter_context(redis_url_for_replicas(redis_h))
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
                    eval_decoding=cfg.decoding,
                    eval_examples=cfg.novelty_eval_examples,
                    seed=cfg.seed,
                    rag=cfg.novelty_rag,
                    rag_top=cfg.novelty_rag_top,
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
                    decoding=cfg.decoding,
                    seed=cfg.seed,
                    limit=cfg.key_limit,
                    rag=cfg.novelty_rag,
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
                    prior=cfg.alignment_prior,
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
                    n=cfg.samples,
                    decoding=cfg.decoding,
                    seed=cfg.seed,
                    limit=cfg.key_limit,
                    rag=cfg.novelty_rag,
                    # the demo's small models may miss a release gate: it publishes anyway, and the version's
                    # meta and the summary record which gates failed (release_gates.forced)
                    force=cfg.force_gates,
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
                    out=str(run_dir / "ranker" / "movielens"),
                    catalog=str(catalog_dir),
                    preset=cfg.ranker_preset,
                    epochs=cfg.ranker_epochs,
                ),
                "feedback": TrainJobConfig(
                    out=str(run_dir / "ranker" / "feedback"),
                    catalog=str(catalog_dir),
                    preset=cfg.ranker_preset,
                    epochs=cfg.ranker_epochs,
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
        summary["timings_s"] = stages.timings
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        # the closed loop through the Ray Serve endpoint (its own Ray and Redis on this run folder): members ask
        # for slates over HTTP and answer through POST /feedback, the models retrain and the endpoint serves
        # the new ones; then the report (jobs.report)
        if os.environ.get("RAY_ADDRESS"):
            print(
                "[loop] skipped on a remote Ray: the endpoint's replicas need REDIS_URL in the cluster's "
                f"environment; run `python -m jobs.loop --run {run_dir}` there instead"
            )
        elif cfg.loop_rounds:
            rounds = stages.run(
                "loop",
                run_loop,
                LoopConfig(
                    run=str(run_dir),
                    rounds=cfg.loop_rounds,
                    members=cfg.loop_members,
                    slots=cfg.round1_explore_slots,
                    alignment_steps=cfg.loop_alignment_steps,
                    alignment_prior=cfg.alignment_prior,
                    samples=cfg.samples,
                    decoding=cfg.decoding,
                    comparisons=False,  # the pairwise model and the ablation: `python -m jobs.loop` (budget)
                    key_limit=cfg.key_limit,
                    num_cpus=cfg.num_cpus,
                    seed=cfg.seed,
                    verbose=args.verbose,
                ),
            )
            summary["loop"] = rounds
            summary["report"] = str(run_dir / "report" / "report.md")
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
