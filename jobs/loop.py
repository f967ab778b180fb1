"""The closed loop on a finished demo run: members use the endpoint, their feedback retrains the models,
the endpoint serves the new ones.

    python -m jobs.loop --run runs/latest --rounds 2 [--members 400] [--slots 4] [--alignment-steps 100]

Each round, with the ranking endpoint running on this run (Ray Serve, the run's Redis cache):
1. traffic: members with a history key (--members of them, drawn per round) ask for a slate of --k items
   with --slots explore slots over HTTP; the simulator (sim/) answers the slates it got through
   POST /feedback, as real clients would;
2. join: the endpoint's impression log and events log become the round's feedback log
   (catalog.join_feedback; a row set aside or missing stops the round);
3. alignment: all explore feedback so far (the demo's exploration traffic plus every round's) is
   aggregated, and the alignment model is retrained warm-started from the previous round's (backbone and
   head; --alignment-steps steps);
4. the main job (jobs.best_of_n) samples the novelty LLM again, scores with the new alignment model and
   publishes a new cache version; the endpoint reads it from the next request on;
5. the ranker is trained incrementally on the round's feedback (warm start from the serving checkpoint,
   Fisher prior with cold weight, bandit posterior carried over) and hot-reloaded into the running
   endpoint (no restart, no dropped request).

With --replay (default) each round's members are also served once in a pseudo-random order
(round-NN/replay/, for the report's replay evaluation; never trained on). With --compare-cold (default) the
ranker is also retrained from scratch on all feedback so far (round-NN/ranker-cold/, not served), and the
next round scores both on its fresh traffic. After the rounds, once per run (--comparisons, default): the
pairwise alignment model beside the demo's pointwise one and the ranker ablation; then jobs.report writes
<run>/report/ (the operating curve, the per-round alignment, ranker and replay tables, the comparisons).

Everything goes under <run>/loop/round-NN/ (feedback/, alignment/, best-of-n/, ranker/, summary.json); a
rerun continues after the last completed round. A failed round leaves the previous models serving: the new
cache version and ranker are switched in only after they were built and checked. The round's summary
line gives the explore slots' click and like rates under the models that served it.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str = Field(
        "runs/latest", description="a finished `make demo` run folder: its catalog, models, cache"
    )
    rounds: int = Field(2, ge=1, description="rounds to run after the last completed one")
    members: int | None = Field(
        None, ge=1, description="members asking for slates per round (default: all with a key)"
    )
    k: int = Field(10, ge=1, le=100, description="items per slate")
    slots: int = Field(4, ge=1, description="explore slots per slate, and clusters cached per key")
    clients: int = Field(4, ge=1, description="concurrent HTTP clients of the traffic and the feedback")
    alignment_steps: int = Field(100, ge=1, description="warm-started alignment training steps per round")
    alignment_prior: Literal["none", "candidate", "key_offset"] = Field(
        "key_offset",
        description="the baseline the alignment LM corrects, refitted on all explore feedback each round "
        "(jobs.train_alignment --prior)",
    )
    ranker_epochs: int = Field(1, ge=1, description="incremental ranker epochs per round")
    samples: int = Field(
        32,
        ge=1,
        description="novelty samples per key in each round's main job (the report's largest best-of-n)",
    )
    decoding: Literal["sample", "top", "distinct"] = Field(
        "sample",
        description="how each round's main job draws the novelty candidates (jobs.best_of_n --decoding)",
    )
    compare_cold: bool = Field(
        True,
        description="also retrain the ranker cold on all feedback so far (not served), for the report's "
        "incremental-vs-cold comparison",
    )
    replay: bool = Field(
        True,
        description="also serve each round's members once in a pseudo-random order (order=shuffled): the "
        "report's replay-evaluation traffic, logged apart (round-NN/replay/), never trained on",
    )
    comparisons: bool = Field(
        True,
        description="once per run, after the rounds: train the pairwise alignment model beside the demo's "
        "pointwise one (<run>/alignment-pairwise) and run the ranker ablation on all feedback so far "
        "(<run>/ablation), the report's pointwise-vs-pairwise and ablation sections",
    )
    report: bool = Field(True, description="write <run>/report/ (jobs.report) after the rounds")
    force_gates: bool = Field(
        True,
        description="publish each round's cache even when a release gate of jobs.best_of_n fails (recorded in "
        "the version's meta; --no-force-gates: refuse as the main job does)",
    )
    key_limit: int | None = Field(
        None, ge=1, description="the main job samples only the first N keys (smoke runs)"
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="CPUs for the bulk jobs of a local Ray (default: all; the endpoint's come on top)",
    )
    seed: int = Field(0, description="seed of the members drawn and the simulator's answers")
    verbose: bool = Field(False, description="library output on the terminal, not in <run>/loop/library.log")


def simulated_engagement(simulator, answers: list[dict], bodies: list[dict]) -> tuple[pa.Table, dict]:
    """The simulator's answers to the slates the endpoint served: (its FEEDBACK_LOG rows, the POST /feedback
    events a client would send: per request id, one event per item engaged with)."""
    from catalog import schemas
    from sim import IMPRESSION_COLUMNS

    rows = [
        {
            "request_id": a["request_id"],
            "member_id": b["member_id"],
            "timestamp": int(time.time() * 1000),
            "history_key": a["history_key"] or [],
            "item_id": it["item_id"],
            "cluster_id": it["cluster_id"],
            "source": it["source"],
            "position": it["position"],
            "content_type": "movie",
        }  # fmt: skip
        for a, b in zip(answers, bodies, strict=True)
        for it in a["items"]
    ]
    impressions = pa.Table.from_pylist(
        rows, schema=pa.schema([schemas.FEEDBACK_LOG.field(c) for c in IMPRESSION_COLUMNS])
    )
    log = simulator.respond(impressions)
    events: dict[str, list[dict]] = {}
    for r in log.to_pylist():
        if r["click"] or r["like"] or r["share"] or r["skip"]:
            event = {f: r[f] for f in ("click", "like", "share", "skip")}
            events.setdefault(r["request_id"], []).append(
                {"item_id": r["item_id"], **event, "dwell_s": r["dwell_s"]}
            )
    return log, events


def post_feedback(base: str, events: dict[str, list[dict]], concurrency: int = 4, progress=None) -> int:
    """POST /feedback for each request's events, `concurrency` clients at once (`progress(1)` after each
    request); returns the events sent."""
    from serving import RankClient

    def send(chunk: list[tuple[str, list[dict]]]) -> int:
        client = RankClient(base, timeout_s=30.0)
        try:
            sent = 0
            for request_id, evs in chunk:
                sent += client.feedback(request_id, evs)["accepted"]
                if progress is not None:
                    progress(1)
            return sent
        finally:
            client.close()

    items = sorted(events.items())
    chunks = [items[i::concurrency] for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(send, chunks))


def serve_traffic(
    base: str, simulator, bodies: list[dict], paths: dict, *, clients: int = 4, label: str = "slates"
) -> dict:
    """Slates for `bodies` over HTTP, the simulator's engagement through POST /feedback, and the two logs
    joined for these requests (a progress bar for each on the terminal). Returns the answers, latencies,
    the joined feedback and the counts; raises when a request fails or the join sets a row aside (the
    simulator answered every served item)."""
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    from catalog import join_feedback, read_event_log, read_impression_log
    from jobs.quiet import terminal_stderr
    from serving import logger_flush, rank_many

    with (
        terminal_stderr(),
        tqdm(total=len(bodies), desc=f"  {label}", unit="req", leave=False, disable=None) as bar,
    ):
        answers, latency = rank_many(base, bodies, concurrency=clients, progress=bar.update)
    failed = [a for a in answers if not isinstance(a, dict)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(answers)} endpoint requests failed, e.g. {failed[0]}")
    simulated, events = simulated_engagement(simulator, answers, bodies)
    t0 = time.perf_counter()
    with (
        terminal_stderr(),
        tqdm(total=len(events), desc="  POST /feedback", unit="req", leave=False, disable=None) as bar,
    ):
        sent = post_feedback(base, events, clients, progress=bar.update)
    feedback_s = time.perf_counter() - t0
    ids = pa.array(sorted(a["request_id"] for a in answers))
    served = sum(len(a["items"]) for a in answers)
    deadline = time.monotonic() + 60
    while True:  # the ingress logs each slate after answering: wait (bounded) until all of them are written
        stats = logger_flush()
        imps = read_impression_log(paths["impressions"])
        mine = imps.filter(pc.is_in(imps["request_id"], ids))
        if mine.num_rows >= served or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    events_log = read_event_log(paths["events"])
    log, quarantine, joined = join_feedback(mine, events_log.filter(pc.is_in(events_log["request_id"], ids)))
    if log.num_rows != simulated.num_rows or sum(joined["quarantined"].values()):
        raise RuntimeError(
            f"the joined feedback ({log.num_rows} rows, set aside {joined['quarantined']}) does not match the "
            f"{simulated.num_rows} served items the simulator answered; see {paths['events'].parent}"
        )
    return {"answers": answers, "latency": latency, "feedback": log, "events_sent": sent,
            "feedback_s": feedback_s, "joined": joined, "log_stats": stats}  # fmt: skip


def _completed(loop_dir: Path) -> list[Path]:
    return sorted(p.parent for p in loop_dir.glob("round-*/summary.json"))


def _retrain_ranker(cfg: LoopConfig, r: int, ctx: dict, out: Path) -> tuple[dict, dict]:
    """The incremental period on the round's feedback, then the hot reload (a checkpoint the replicas refuse
    leaves the previous one serving)."""
    from jobs.train_ranker import TrainJobConfig
    from jobs.train_ranker import train as train_ranker
    from serving import reload_ranker

    metrics = train_ranker(
        TrainJobConfig(
            out=str(out / "ranker"),
            catalog=str(ctx["paths"]["catalog"]),
            dataset="feedback",
            logs=[str(out / "feedback")],
            warm_start=str(ctx["models"]["ranker"]),
            epochs=cfg.ranker_epochs,
            seed=cfg.seed + r,
        )  # fmt: skip
    )
    return metrics, reload_ranker(ctx["config"], str(out / "ranker"))


def _cold_ranker(cfg: LoopConfig, r: int, ctx: dict, out: Path) -> dict:
    """The same ranker retrained from scratch on all feedback so far (the demo's round-0 logs the first
    ranker learnt from, and every round's): what incremental training is compared against. Not served."""
    from jobs.train_ranker import TrainJobConfig
    from jobs.train_ranker import train as train_ranker
    from ranking import read_checkpoint_config

    run = ctx["run"]
    logs = [*sorted(str(p) for p in (run / "logs" / "round0").iterdir() if p.is_dir()),
            *(str(p / "feedback") for p in _completed(run / "loop")), str(out / "feedback")]  # fmt: skip
    first = run / "ranker" / "feedback"
    read_checkpoint_config(first)  # checked; its "ranker" section is the model the rounds train
    metrics = train_ranker(
        TrainJobConfig(
            out=str(out / "ranker-cold"),
            catalog=str(ctx["paths"]["catalog"]),
            dataset="feedback",
            logs=logs,
            ranker=json.loads((first / "config.json").read_text())["ranker"],
            seed=cfg.seed + r,
            export=False,
        )  # fmt: skip
    )
    return {"auc": {t: v["auc"] for t, v in metrics["tasks"].items()}, "train_s": metrics["train"]["seconds"],
            "rows": metrics["train"]["rows"], "logs": logs}  # fmt: skip


def _previous_on(log: pa.Table, run: Path, catalog) -> dict | None:
    """The previous round's incremental and cold rankers on this round's traffic (which neither saw)."""
    from ranking import evaluate_checkpoint

    done = _completed(run / "loop")
    if not done or not (done[-1] / "ranker-cold").is_dir():
        return None
    return {
        name: {t: m["auc"] for t, m in evaluate_checkpoint(done[-1] / folder, log, catalog).items()}
        for name, folder in (("incremental", "ranker"), ("cold", "ranker-cold"))
    }


def run_comparisons(run: Path, *, seed: int = 0) -> None:
    """What the report compares once per run, each skipped when the run has it already: the pairwise
    alignment model (the demo's data, base, split and steps; only the objective differs) and the ranker
    ablation on all feedback logs so far."""
    from jobs.ablate_ranker import AblationJobConfig, ablate
    from jobs.train_alignment import AlignmentTrainFields
    from jobs.train_alignment import train as train_alignment

    demo = json.loads((run / "summary.json").read_text())
    if not (run / "alignment-pairwise" / "summary.json").is_file():
        print("[pairwise alignment] ...", flush=True)
        m = train_alignment(
            AlignmentTrainFields(
                catalog=str(run / "catalog"),
                logs=[str(run / "logs" / "explore")],
                candidates=str(run / "candidates" / "candidates"),
                base=str(run / "novelty"),
                method=demo["alignment"]["model"]["method"],
                objective="pairwise",
                max_steps=demo["alignment"]["model"]["steps"],
                seed=demo["config"]["seed"],
            ),  # fmt: skip
            run / "alignment-pairwise",
            progress=False,
        )["model"]
        print(f"  pairwise: held-out AUC {m['evaluation']['model']['auc']:.4f} in {m['train_s']:.0f}s "
              f"(pointwise {demo['alignment']['model']['evaluation']['model']['auc']:.4f} in "
              f"{demo['alignment']['model']['train_s']:.0f}s)", flush=True)  # fmt: skip
    if not (run / "ablation" / "ablation.json").is_file():
        print("[ranker ablation] ...", flush=True)
        logs = [*sorted(str(p) for p in (run / "logs" / "round0").iterdir() if p.is_dir()),
                *(str(p / "feedback") for p in _completed(run / "loop"))]  # fmt: skip
        ablate(AblationJobConfig(out=str(run / "ablation"), catalog=str(run / "catalog"), dataset="feedback",
                                 logs=logs, seed=seed))  # fmt: skip


def _roll_back(url: str, version: str) -> None:
    """Make the previous cache version live again if `version` (this round's) is live."""
    import redis

    from explore.cache import live_version, rollback

    client = redis.Redis.from_url(url)
    try:
        if live_version(client, "explore") == version:
            print(f"  rolled the cache back to {rollback(client, 'explore')} (the round failed)", flush=True)
    finally:
        client.close()


def serve_cpus(config: dict) -> float:
    """The CPUs the app's deployments reserve (replicas x num_cpus; autoscaled ones at their maximum)."""
    total = 0.0
    for app in config.get("applications", []):
        for d in app.get("deployments", []):
            replicas = d.get("num_replicas") or (d.get("autoscaling_config") or {}).get("max_replicas", 1)
            total += replicas * (d.get("ray_actor_options") or {}).get("num_cpus", 1)
    return total


def current_models(run: Path) -> dict[str, Path]:
    """The models serving now: the last completed round's, else the demo's."""
    done = _completed(run / "loop")
    if done:
        last = done[-1]
        return {
            "alignment": last / "alignment",
            "ranker": last / "ranker",
            "round": int(last.name.split("-")[1]),
        }
    return {"alignment": run / "alignment", "ranker": run / "ranker" / "feedback", "round": 0}


def run_round(cfg: LoopConfig, r: int, ctx: dict) -> dict:
    """One round (see the module docstring); returns its summary (also round-NN/summary.json)."""
    import numpy as np

    from explore import read_model_info
    from jobs.best_of_n import BestOfNFields
    from jobs.best_of_n import run as run_best_of_n
    from jobs.simulate import rates
    from jobs.train_alignment import AlignmentTrainFields
    from jobs.train_alignment import train as train_alignment

    run, paths, models = ctx["run"], ctx["paths"], ctx["models"]
    out = run / "loop" / f"round-{r:02d}"
    if out.exists():  # an attempt that failed: kept for inspection, never mixed into this one
        aside = out.with_name(f"{out.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        print(f"  round {r}: the failed attempt's folder moved to {aside.name}", flush=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed + r)
    members = ctx["members"]
    if cfg.members and cfg.members < len(members):
        members = sorted(rng.choice(members, cfg.members, replace=False).tolist())
    bodies = [{"member_id": int(m), "k": cfg.k, "explore_slots": cfg.slots} for m in members]
    traffic = serve_traffic(ctx["base"], ctx["simulator"], bodies, paths, clients=cfg.clients)
    timings = {"traffic": time.perf_counter() - t0}
    from catalog import FeedbackLogWriter

    FeedbackLogWriter(out / "feedback").append(traffic["feedback"])
    previous = _previous_on(traffic["feedback"], run, ctx["catalog"])
    replay = None
    if cfg.replay:  # the same members again, each slate in an order no model chose (LiRank 5.1)
        shuffled = serve_traffic(ctx["base"], ctx["simulator"], [{**b, "order": "shuffled"} for b in bodies], paths,
                                 clients=cfg.clients, label="shuffled slates")  # fmt: skip
        unshuffled = sum(a["order"] != "shuffled" for a in shuffled["answers"])
        if unshuffled:
            raise RuntimeError(f"{unshuffled} replay requests came back ranked, not shuffled")
        FeedbackLogWriter(out / "replay").append(shuffled["feedback"])
        replay = {"slates": len(bodies), "rates": rates(shuffled["feedback"])}
    timings["replay"] = time.perf_counter() - t0 - sum(timings.values())
    served_by = {"cache_version": ctx["cache_version"], "ranker": str(models["ranker"])}
    r_rates = rates(traffic["feedback"])
    print(
        f"  round {r} traffic: {len(bodies)} slates, {traffic['events_sent']} events via /feedback, "
        f"{traffic['joined']['feedback_rows']} feedback rows; explore slots ({r_rates['explore']['impressions']}): "
        f"click {r_rates['explore']['click']:.3f} like {r_rates['explore']['like']:.3f}",
        flush=True,
    )
    explore_logs = [str(run / "logs" / "explore"), *(str(p / "feedback") for p in _completed(run / "loop")),
                    str(out / "feedback")]  # fmt: skip
    aligned = train_alignment(
        AlignmentTrainFields(
            catalog=str(paths["catalog"]),
            logs=explore_logs,
            warm_start=str(models["alignment"]),
            max_steps=cfg.alignment_steps,
            prior=cfg.alignment_prior,
            seed=cfg.seed,  # one held-out split (a hash of key and cluster under this seed) for every round
        ),  # fmt: skip
        out / "alignment",
        progress=False,
    )
    timings["alignment"] = time.perf_counter() - t0 - sum(timings.values())
    ev = aligned["model"]["evaluation"]
    print(
        f"  round {r} alignment (warm): held-out AUC {ev['model']['auc']:.4f} vs global rate "
        f"{ev['global_positive_rate']['auc']:.4f} on {aligned['aggregation']['pairs_kept']} pairs",
        flush=True,
    )
    bon = run_best_of_n(
        BestOfNFields(
            catalog=str(paths["catalog"]),
            novelty=str(run / "novelty"),
            alignment=str(out / "alignment"),
            slots=cfg.slots,
            n=cfg.samples,
            decoding=cfg.decoding,
            seed=cfg.seed + r,
            limit=cfg.key_limit,
            rag=read_model_info(run / "novelty").rag,  # as trained: --rag or not
            force=cfg.force_gates,
        ),  # fmt: skip
        out / "best-of-n",
        ctx["redis_url"],
    )
    timings["best_of_n"] = time.perf_counter() - t0 - sum(timings.values())
    print(
        f"  round {r} cache: version {bon['version']} live ({bon['entries']} entries, {bon['wall_s']:.0f}s)",
        flush=True,
    )
    try:
        metrics, info = _retrain_ranker(cfg, r, ctx, out)
    except BaseException:
        _roll_back(
            ctx["redis_url"], bon["version"]
        )  # the previous round's cache serves again, with its ranker
        raise
    ctx["cache_version"] = bon["version"]
    timings["ranker"] = time.perf_counter() - t0 - sum(timings.values())
    cold = _cold_ranker(cfg, r, ctx, out) if cfg.compare_cold else None
    timings["ranker_cold"] = time.perf_counter() - t0 - sum(timings.values())
    print(
        f"  round {r} ranker: incremental from {models['ranker']}, click AUC {metrics['tasks']['click']['auc']:.4f}; "
        f"hot-reloaded (version {info.get('version')})",
        flush=True,
    )
    models.update(alignment=out / "alignment" / "model", ranker=out / "ranker")
    summary = {
        "round": r,
        "served_by": served_by,
        "slates": len(bodies),
        "rates": r_rates,
        "feedback": traffic["joined"],
        "latency_ms": {
            "p50": float(np.percentile(traffic["latency"], 50)),
            "p99": float(np.percentile(traffic["latency"], 99)),
        },  # fmt: skip
        "alignment": {
            "evaluation": ev,
            "steps": aligned["model"]["steps"],
            "warm_start": aligned["model"]["warm_start"],
        },
        "cache": {k: bon[k] for k in ("version", "entries", "keys", "wall_s")},
        "ranker": {
            "version": info.get("version"),
            "auc": {t: v["auc"] for t, v in metrics["tasks"].items()},
            "train_s": metrics["train"]["seconds"],
            "rows": metrics["train"]["rows"],
        },  # fmt: skip
        "ranker_cold": cold,
        "replay": replay,
        "previous_rankers_on_this_traffic": previous,
        "wall_s": round(time.perf_counter() - t0, 1),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _live(url: str) -> str | None:
    import redis

    from explore.cache import live_version

    client = redis.Redis.from_url(url)
    try:
        return live_version(client, "explore")
    finally:
        client.close()


def loop(cfg: LoopConfig) -> list[dict]:
    """Run cfg.rounds rounds on the run folder; returns their summaries."""
    from catalog import Catalog
    from jobs.quiet import library_output, route_ray_worker_output
    from jobs.serve import ServeJobConfig, build_config, check_ranker, quiet_logs, run_paths
    from jobs.services import free_port, ray_session, redis_service, redis_url_for_replicas
    from serving import deploy
    from sim import MemberSimulator, SimConfig

    run = Path(cfg.run).resolve()
    if not (run / "summary.json").is_file() or not (run / "novelty").is_dir():
        raise FileNotFoundError(f"--run {cfg.run}: not a finished demo run folder; run `make demo` first.")
    quiet_logs(verbose=cfg.verbose)
    models = current_models(run)
    paths = {k: v.resolve() for k, v in run_paths(run).items()}
    check_ranker(paths["catalog"], models["ranker"])
    catalog = Catalog.load(paths["catalog"])
    k = catalog.history_k
    histories = zip(*(catalog.histories[c].to_pylist() for c in ("member_id", "clusters")), strict=True)
    members = [m for m, h in histories if len(h) >= k]
    config = build_config(
        ServeJobConfig(run=str(run), port=free_port()), {**paths, "ranker": models["ranker"]}
    )
    summaries = []
    with ExitStack() as stack:
        log = stack.enter_context(library_output(run / "loop" / "library.log", verbose=cfg.verbose))
        redis_h = stack.enter_context(redis_service(data_dir=run / "redis"))
        stack.enter_context(redis_url_for_replicas(redis_h))
        # the endpoint keeps its CPUs while the bulk jobs run: a local Ray gets them on top, or the bulk
        # pipeline would wait for CPUs the replicas never give back (on a cluster they are other nodes)
        session = stack.enter_context(
            ray_session(num_cpus=(cfg.num_cpus or os.cpu_count() or 1) + serve_cpus(config))
        )
        if session.initialized_here:
            route_ray_worker_output()
        from ray import serve

        # the port is picked once Ray runs: a port free before Ray started may be one of Ray's own by now
        config["http_options"]["port"] = free_port()
        deploy(config)
        stack.callback(serve.shutdown)
        base = f"http://127.0.0.1:{config['http_options']['port']}"
        print(f"[loop] endpoint {base} on {run}; rounds {models['round'] + 1}..{models['round'] + cfg.rounds}"
              + (f"; library output in {log}" if log else ""), flush=True)  # fmt: skip
        ctx = {"run": run, "paths": paths, "models": models, "members": members, "base": base,
               "config": config, "redis_url": redis_h.url, "cache_version": _live(redis_h.url), "catalog": catalog,
               "simulator": MemberSimulator.for_catalog(catalog, SimConfig(seed=cfg.seed + 7))}  # fmt: skip
        for r in range(models["round"] + 1, models["round"] + 1 + cfg.rounds):
            print(f"[round {r}] ...", flush=True)
            s = run_round(cfg, r, ctx)
            print(f"[round {r}] done in {s['wall_s']:.0f}s", flush=True)
            summaries.append(s)
        if redis_h.server is not None:
            redis_h.server.save()  # the cache versions the rounds published stay with the run
        if cfg.comparisons:
            run_comparisons(run, seed=cfg.seed)
    if cfg.report:
        from jobs.report import ReportConfig, build_report, summary_lines

        print("[report] ...", flush=True)
        for line in summary_lines(build_report(ReportConfig(run=str(run), seed=cfg.seed))):
            print("  " + line, flush=True)
    return summaries


def main(argv: list[str] | None = None) -> None:
    args = job_parser(LoopConfig, __doc__).parse_args(argv)

    def body() -> int:
        summaries = loop(merge_config(LoopConfig, args))
        for s in summaries:
            e = s["rates"]["explore"]
            print(
                f"round {s['round']}: explore like {e['like']:.3f} click {e['click']:.3f} "
                f"({e['impressions']} explore impressions); then alignment AUC "
                f"{s['alignment']['evaluation']['model']['auc']:.4f}, cache {s['cache']['version']}, "
                f"ranker {s['ranker']['version']}"
            )
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
