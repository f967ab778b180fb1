"""Deploying the ranking app from a Serve config (serve_config.yaml), from Python: the declarative path
that `serve run CONFIG` takes, so a changed ranker `user_config` is a lightweight update
(`RankerModel.reconfigure`) rather than new replicas. Used by jobs.serve, the demo, the tests and bench.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import yaml

from serving.app import APP_NAME, INGRESS, LOGGER, RANKER

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"


class DeployError(RuntimeError):
    """The app did not come up; the message carries Serve's own reason."""


def load_config(path: str | Path = DEFAULT_CONFIG) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Serve config {path} does not exist; pass the path of a serve_config.yaml.")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"Serve config {path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or not config.get("applications"):
        raise ValueError(f"Serve config {path} has no 'applications:' list; start from serve_config.yaml.")
    return config


def app_entry(config: dict) -> dict:
    apps = [a for a in config["applications"] if a.get("name") == APP_NAME]
    if not apps:
        raise ValueError(f"the Serve config has no application named {APP_NAME!r}.")
    return apps[0]


def deployment_entry(config: dict, name: str) -> dict:
    app = app_entry(config)
    for d in app.setdefault("deployments", []):
        if d.get("name") == name:
            return d
    entry = {"name": name}
    app["deployments"].append(entry)
    return entry


def with_ranker(config: dict, ranker: str, **user_config) -> dict:
    """A copy of `config` whose RankerModel user_config names `ranker` (the hot-reload change)."""
    config = copy.deepcopy(config)
    entry = deployment_entry(config, RANKER)
    entry["user_config"] = {**(entry.get("user_config") or {}), "ranker": str(ranker), **user_config}
    return config


def deploy(config: dict, *, timeout_s: float = 180.0) -> None:
    """Start Serve (HTTP options from the config) and apply the config; wait until the app runs."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        global_logging_config=schema.logging_config,  # the controller's and proxies' log level too
    )
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    time.sleep(0.5)
    while True:
        app = serve.status().applications.get(APP_NAME)
        status = str(getattr(app, "status", "")).split(".")[-1] if app else "NOT_STARTED"
        if status == "RUNNING" and _updated(app):
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise DeployError(f"the ranking app is {status}: {_reason(app)}")
        if time.monotonic() > deadline:
            raise DeployError(f"the ranking app is still {status} after {timeout_s:.0f}s: {_reason(app)}")
        time.sleep(0.25)


def _updated(app) -> bool:
    return all(str(d.status).split(".")[-1] == "HEALTHY" for d in app.deployments.values())


def _reason(app) -> str:
    if app is None:
        return "no status"
    parts = [app.message] if app.message else []
    parts += [f"{n}: {d.message}" for n, d in app.deployments.items() if d.message]
    return " | ".join(parts)[:2000] or "no message"


def reload_ranker(config: dict, ranker: str, *, timeout_s: float = 120.0, **user_config) -> dict:
    """Hot-reload: apply `config` with a new RankerModel user_config naming `ranker`, then wait until the
    replica reports it loaded (its version is the folder's content hash) or refused it (reload_error
    names it: the old checkpoint keeps serving). Returns the replica's info."""
    from ranking.checkpoint import checkpoint_version

    target = str(ranker)
    started_ms = time.time_ns() // 1_000_000
    # a new revision makes the user_config differ even when the folder's path does not (a retrained
    # checkpoint swapped into the same folder), so Serve calls reconfigure
    user_config = {"revision": str(time.time_ns()), **user_config}
    deploy(with_ranker(config, target, **user_config), timeout_s=timeout_s)
    try:
        want = checkpoint_version(target)
    except (OSError, ValueError):
        want = None  # an incomplete folder: the replica refuses it and says why
    deadline = time.monotonic() + timeout_s
    while True:
        info = ranker_info()
        if info["path"] == target and info["version"] == want:
            return info
        error = info.get("reload_error") or {}
        if error.get("ranker") == target and error.get("at_ms", 0) >= started_ms:
            return info
        if time.monotonic() > deadline:
            raise DeployError(f"the ranker replica did not take {target} within {timeout_s:.0f}s: {info}")
        time.sleep(0.2)


def ingress_handle():
    from ray import serve

    return serve.get_app_handle(APP_NAME)


def ranker_info() -> dict:
    from ray import serve

    return serve.get_deployment_handle(RANKER, APP_NAME).info.remote().result(timeout_s=30)


def logger_flush() -> dict:
    """Write what the impression logger buffers now (tests, the demo, shutdown)."""
    from ray import serve

    return serve.get_deployment_handle(LOGGER, APP_NAME).flush.remote().result(timeout_s=60)


__all__ = [
    "DEFAULT_CONFIG",
    "DeployError",
    "INGRESS",
    "app_entry",
    "deploy",
    "deployment_entry",
    "ingress_handle",
    "load_config",
    "logger_flush",
    "ranker_info",
    "with_ranker",
]
