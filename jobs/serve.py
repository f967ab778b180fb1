"""Run the ranking endpoint (Ray Serve) on a finished `make demo` run, reload its ranker, or show its state.

    python -m jobs.serve --run runs/latest [--host 127.0.0.1] [--port 8000]     # `make serve`
    python -m jobs.serve reload --ranker runs/<run>/ranker/feedback [--run runs/latest]
    python -m jobs.serve status [--run runs/latest]
    python -m jobs.serve --run runs/latest --write-config my_serve.yaml         # for `serve deploy`

`--run` starts a private local Ray (or uses RAY_ADDRESS), the run's Redis (its saved cache,
<run>/redis/dump.rdb; or the server at REDIS_URL) and the app of serve_config.yaml with the run's
catalog, ranker (<run>/ranker/feedback) and impression log (<run>/logs/serving/impressions); it prints a
curl example and serves until Ctrl-C or SIGTERM, then stops what it started (the impression log is
flushed first). Replicas, CPUs/GPUs, batching and autoscaling come from the config file; the flags
below override it. Binds 127.0.0.1 unless --host says otherwise.

`reload` applies a new ranker checkpoint to the running app as a user_config change: each ranker
replica loads it beside the old one, checks it against the feature store and swaps it in; a
checkpoint that fails leaves the old one serving (the command says why, and so does /readyz).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import add_config_flag, add_model_flags
from jobs.common import merge_config, run_main


class ServeJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str = Field("runs/latest", description="a finished `make demo` run folder")
    serve_config: str | None = Field(
        None, description="Serve config file (default: this repo's serve_config.yaml)"
    )
    ranker: str | None = Field(
        None, description="ranker checkpoint (serve: default <run>/ranker/feedback; reload: required)"
    )
    host: str | None = Field(None, description="HTTP bind address (default 127.0.0.1)")
    port: int | None = Field(None, ge=1, le=65535, description="HTTP port (default 8000)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all)")
    ingress_replicas: int | None = Field(None, ge=1, description="ingress replicas (default 1)")
    ranker_replicas: int | None = Field(None, ge=1, description="ranker replicas (default 1)")
    ingress_cpus: float | None = Field(None, ge=0, description="CPUs per ingress replica (default 0.5)")
    ranker_cpus: float | None = Field(None, ge=0, description="CPUs per ranker replica (default 0.5)")
    ranker_gpus: float | None = Field(
        None, ge=0, description="GPUs per ranker replica (default 0; 1: the replicas score on CUDA)"
    )
    min_ranker_replicas: int | None = Field(
        None, ge=0, description="autoscaling floor (with --max-ranker-replicas)"
    )
    max_ranker_replicas: int | None = Field(None, ge=1, description="autoscale the ranker up to N replicas")
    max_batch_rows: int | None = Field(None, ge=1, description="candidate rows per batch (default 1024)")
    batch_wait_ms: float | None = Field(None, ge=0, description="how long a batch waits to fill (default 2)")
    batching: bool | None = Field(None, description="batch requests (--no-batching: score each alone)")
    device: str | None = Field(
        None, pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="ranker device: auto, cpu, cuda[:N]"
    )
    verbose: bool = Field(False, description="Ray Serve's own INFO logs and access lines")


# the fields `reload` and `status` take; `serve` takes them all
RUN_FIELDS = ("run", "serve_config", "ranker", "verbose")


def run_paths(run: str | Path) -> dict[str, Path]:
    run = Path(run)
    return {
        "run": run,
        "catalog": run / "catalog",
        "ranker": run / "ranker" / "feedback",
        "redis": run / "redis",
        "impressions": run / "logs" / "serving" / "impressions",
        "events": run / "logs" / "serving" / "events",  # POST /feedback (beside the impressions: the default)
        "state": run / "serve" / "state.json",
    }


def check_run(cfg: ServeJobConfig) -> dict[str, Path]:
    paths = run_paths(cfg.run)
    if not paths["run"].is_dir():
        raise FileNotFoundError(
            f"--run {cfg.run}: no such folder. Run `make demo` first, or give a demo run folder."
        )
    if not (paths["catalog"] / "manifest.json").is_file():
        raise FileNotFoundError(
            f"--run {cfg.run}: {paths['catalog']} is not a complete catalog (no manifest.json). Give a finished "
            "`make demo` run."
        )
    if cfg.ranker:
        paths["ranker"] = Path(cfg.ranker)
    if not (paths["ranker"] / "config.json").is_file():
        raise FileNotFoundError(
            f"{paths['ranker']} is not a ranker checkpoint (no config.json). Train one with `python -m "
            "jobs.train_ranker --dataset feedback`, or pass --ranker DIR."
        )
    if not os.environ.get("REDIS_URL") and not (paths["redis"] / "dump.rdb").is_file():
        raise FileNotFoundError(
            f"{paths['redis']}/dump.rdb is missing: the run did not save its Redis cache (runs of an older demo do "
            "not). Re-run `make demo`, or set REDIS_URL to the Redis that holds the cache."
        )
    return {k: v.resolve() for k, v in paths.items()}


def check_ranker(catalog: Path, ranker: Path) -> str:
    """Load the checkpoint here first, so a bad one is a clear error before anything starts."""
    from ranking import Ranker
    from serving import OnlineFeatureStore

    r = Ranker.load(ranker, device="cpu")
    OnlineFeatureStore.from_catalog(catalog).check_ranker_schema(r.schema)
    return r.version


def build_config(cfg: ServeJobConfig, paths: dict[str, Path]) -> dict:
    """serve_config.yaml (or --serve-config) with the run's paths and the flags applied. It holds no
    secret: the replicas read the cache's Redis URL from REDIS_URL in their environment."""
    from serving import DEFAULT_CONFIG, app_entry, deployment_entry, load_config, with_ranker

    config = load_config(cfg.serve_config or DEFAULT_CONFIG)
    http = config.setdefault("http_options", {})
    if cfg.host:
        http["host"] = cfg.host
    if cfg.port:
        http["port"] = cfg.port
    http.setdefault("host", "127.0.0.1")
    if cfg.verbose:
        config["logging_config"] = {"log_level": "INFO", "enable_access_log": True}
    app = app_entry(config)
    args = app.setdefault("args", {})
    args.update(catalog=str(paths["catalog"]), log_dir=str(paths["impressions"]))
    if cfg.device:
        args["device"] = cfg.device
    ingress, ranker = deployment_entry(config, "RankIngress"), deployment_entry(config, "RankerModel")
    for entry, replicas, cpus in (
        (ingress, cfg.ingress_replicas, cfg.ingress_cpus),
        (ranker, cfg.ranker_replicas, cfg.ranker_cpus),
    ):
        if replicas:
            entry["num_replicas"] = replicas
            entry.pop("autoscaling_config", None)
        if cpus is not None:
            entry.setdefault("ray_actor_options", {})["num_cpus"] = cpus
    if cfg.ranker_gpus is not None:
        ranker.setdefault("ray_actor_options", {})["num_gpus"] = cfg.ranker_gpus
    if cfg.max_ranker_replicas:
        ranker.pop("num_replicas", None)
        ranker["autoscaling_config"] = {
            "min_replicas": cfg.min_ranker_replicas or 1,
            "max_replicas": cfg.max_ranker_replicas,
            "target_ongoing_requests": 8,
        }
    batching = {
        k: v
        for k, v in (
            ("max_batch_rows", cfg.max_batch_rows),
            ("batch_wait_ms", cfg.batch_wait_ms),
            ("batching", cfg.batching),
        )
        if v is not None
    }
    return with_ranker(config, str(paths["ranker"]), **batching)


def quiet_logs(verbose: bool) -> None:
    """Ray's and Serve's INFO lines off the terminal (a filter: Serve resets its logger's level at start)."""
    import logging

    if not verbose:
        for name in ("ray", "ray.serve", "ray.data"):
            logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.WARNING)


def serve_forever(cfg: ServeJobConfig) -> int:
    from explore.cache import redact_url
    from jobs.services import RedisServer, connect_redis, ray_session
    from serving import app_entry, deploy, logger_flush, remove_app

    quiet_logs(cfg.verbose)
    paths = check_run(cfg)
    remote = bool(os.environ.get("RAY_ADDRESS"))
    url = os.environ.get("REDIS_URL")
    if remote and not url:
        raise ValueError(
            "RAY_ADDRESS is set but REDIS_URL is not: replicas on a cluster cannot reach a Redis started on this "
            "machine. Set REDIS_URL to a Redis the cluster reaches (and in the cluster nodes' environment)."
        )
    t0 = time.perf_counter()
    version = check_ranker(paths["catalog"], paths["ranker"])
    print(f"[serve] ranker {paths['ranker']} (version {version}) reads the feature store's columns")
    server = None
    if url:
        connect_redis(url).close()
    else:
        server = RedisServer.start(data_dir=paths["redis"])
        url = server.url
        os.environ["REDIS_URL"] = url  # a local Ray started below passes it on to every worker
    stop = threading.Event()
    try:
        config = build_config(cfg, paths)
        namespace = app_entry(config).get("args", {}).get("namespace", "explore")
        live = _live_version(url, namespace)
        print(
            f"[serve] redis {redact_url(url)}: live cache version {live or 'none (answers are exploit-only)'}"
        )
        with ray_session(num_cpus=cfg.num_cpus) as session:
            import ray

            print(f"[serve] ray {session.address}; deploying the app (about 10-20 s) ...", flush=True)
            http = deploy(config)
            base = f"http://{http.get('host', '?')}:{http.get('port', '?')}"
            wanted = config["http_options"]
            if (http.get("host"), http.get("port")) != (wanted.get("host"), wanted.get("port")):
                print(
                    f"[serve] note: Serve was already running with HTTP on {base}, not {wanted.get('host')}:"
                    f"{wanted.get('port')}; the app is served there.",
                    file=sys.stderr,
                )
            paths["state"].parent.mkdir(parents=True, exist_ok=True)
            started_ms = time.time_ns() // 1_000_000
            state = {
                "ray_address": ray.get_runtime_context().gcs_address,
                # the local Ray's token file (0600; the token itself is never written here)
                "ray_auth_token_path": session.auth_token_path,
                "url": base,
                "config": config,
                "started_ms": started_ms,
            }
            paths["state"].write_text(json.dumps(state, indent=2))
            print(f"[serve] ready in {time.perf_counter() - t0:.1f}s at {base} (OpenAPI: {base}/docs)")
            print(
                f"  curl -s -X POST {base}/rank -H 'content-type: application/json' "
                '-d \'{"member_id": 1, "k": 10, "explore_slots": 2}\''
            )
            print(
                f"  python -m jobs.serve reload --ranker DIR --run {cfg.run}    # hot-reload a new checkpoint"
            )
            for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
                signal.signal(sig, lambda *_: stop.set())
            print("  Ctrl-C stops it.", flush=True)
            while not stop.wait(1.0):
                pass
            print("[serve] stopping: flushing the impression log ...", flush=True)
            try:
                stats = logger_flush()
                print(
                    f"  {stats['rows_written']} impressions in {stats['parts']} parts under {stats['folder']}"
                )
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                print(f"  impression log flush failed: {exc}", file=sys.stderr)
            remove_app(whole_serve=session.started_here)  # on a shared cluster, only this app
            _remove_state(paths["state"], started_ms)
    finally:
        if server is not None:
            server.stop()
    print("[serve] stopped")
    return 0


def _remove_state(path: Path, started_ms: int) -> None:
    """Remove the state file if it is still ours (another `jobs.serve` on the run may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("started_ms") == started_ms:
            path.unlink()
    except (OSError, ValueError):
        pass


def _live_version(url: str, namespace: str) -> str | None:
    from explore.cache import live_version
    from jobs.services import connect_redis

    client = connect_redis(url)
    try:
        return live_version(client, namespace)
    finally:
        client.close()


def _attach(run: str):
    """Connect to the Ray that runs the app: RAY_ADDRESS, else the local one `jobs.serve --run` recorded."""
    from jobs.services import start_ray

    state_path = run_paths(run)["state"]
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    address = os.environ.get("RAY_ADDRESS") or (state or {}).get("ray_address")
    if not address:
        raise FileNotFoundError(
            f"{state_path} does not exist: no `python -m jobs.serve --run {run}` is running. Start it, or set "
            "RAY_ADDRESS to the cluster that runs the app."
        )
    token = None if os.environ.get("RAY_ADDRESS") else (state or {}).get("ray_auth_token_path")
    return start_ray(address=address, auth_token_path=token), state


def reload(cfg: ServeJobConfig) -> int:
    from serving import reload_ranker, with_ranker

    quiet_logs(cfg.verbose)
    if not cfg.ranker:
        raise ValueError("reload needs --ranker DIR: the checkpoint to serve.")
    paths = run_paths(cfg.run)
    ranker = Path(cfg.ranker).resolve()
    session, state = _attach(cfg.run)
    try:
        t0 = time.perf_counter()
        # the config Serve runs (read back from Serve), else the one `jobs.serve --run` recorded
        info = reload_ranker(state["config"] if state else None, str(ranker))
        if state and info.get("path") == str(ranker):  # the recorded config names what serves now
            state["config"] = with_ranker(state["config"], str(ranker))
            paths["state"].write_text(json.dumps(state, indent=2))
    finally:
        session.shutdown()
    error = info.get("reload_error") or {}
    if info.get("path") != str(ranker):
        print(
            f"error: the replicas refused {ranker}: {error.get('error')}. Still serving {info['version']} "
            f"({info['path']}).",
            file=sys.stderr,
        )
        return 2
    print(
        f"reloaded in {time.perf_counter() - t0:.1f}s: ranker {info['version']} from {info['path']} on {info['device']}"
    )
    return 0


def status(cfg: ServeJobConfig) -> int:
    from serving import ranker_info

    quiet_logs(cfg.verbose)
    session, state = _attach(cfg.run)
    try:
        from ray import serve

        apps = serve.status().applications
        out = {
            "url": (state or {}).get("url"),
            "apps": {n: str(a.status).split(".")[-1] for n, a in apps.items()},
            "ranker": ranker_info() if "ranking" in apps else None,
        }
    finally:
        session.shutdown()
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("reload", "status") else "serve"
    p = argparse.ArgumentParser(
        prog=f"python -m jobs.serve{'' if command == 'serve' else ' ' + command}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(p, ServeJobConfig)
    serve_only = (
        () if command == "serve" else tuple(f for f in ServeJobConfig.model_fields if f not in RUN_FIELDS)
    )
    add_model_flags(p, ServeJobConfig, exclude=serve_only)
    if command == "serve":
        p.add_argument(
            "--write-config", dest="write_config", help="write the filled Serve config to FILE and exit"
        )
    args = p.parse_args(argv)

    def body() -> int:
        cfg = merge_config(ServeJobConfig, args)
        if command == "reload":
            return reload(cfg)
        if command == "status":
            return status(cfg)
        if getattr(args, "write_config", None):
            import yaml

            paths = check_run(cfg)
            config = build_config(cfg, paths)
            Path(args.write_config).write_text(yaml.safe_dump(config, sort_keys=False))
            print(
                f"wrote {args.write_config}; the replicas read the cache's Redis from REDIS_URL in their environment"
            )
            return 0
        return serve_forever(cfg)

    run_main(body)


if __name__ == "__main__":
    main()
