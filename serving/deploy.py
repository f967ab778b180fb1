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


def deploy(config: dict, *, timeout_s: float = 180.0) -> dict:
    """Start Serve (HTTP options from the config) and apply the config; wait until the app runs.

    Other applications deployed from configs on the same Serve are kept (a Serve config is declarative:
    applied alone, it would delete them). Returns the HTTP options Serve actually runs with: a Serve that
    was already running keeps its own, which may differ from the config's."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        global_logging_config=schema.logging_config,  # the controller's and proxies' log level too
    )
    details = client.get_serve_details()
    ours = {a.name for a in schema.applications}
    for name, app in (details.get("applications") or {}).items():
        if name not in ours and app.get("deployed_app_config"):
            schema.applications.append(ServeApplicationSchema.model_validate(app["deployed_app_config"]))
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    time.sleep(0.5)
    while True:
        app = serve.status().applications.get(APP_NAME)
        status = str(getattr(app, "status", "")).split(".")[-1] if app else "NOT_STARTED"
        if status == "RUNNING" and _updated(app):
            return dict(details.get("http_options") or {})
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise DeployError(f"the ranking app is {status}: {_reason(app)}")
        if time.monotonic() > deadline:
            raise DeployError(f"the ranking app is still {status} after {timeout_s:.0f}s: {_reason(app)}")
        time.sleep(0.25)


def live_config() -> dict | None:
    """The ranking app's config as Serve runs it (None when it was not deployed from a config)."""
    from ray.serve._private import api as serve_api

    details = serve_api.serve_start().get_serve_details()
    app = (details.get("applications") or {}).get(APP_NAME) or {}
    if not app.get("deployed_app_config"):
        return None
    return {
        "proxy_location": details.get("proxy_location") or "HeadOnly",
        "http_options": {
            k: v
            for k, v in (details.get("http_options") or {}).items()
            if k in ("host", "port", "request_timeout_s")
        },
        "applications": [app["deployed_app_config"]],
    }


def remove_app(*, whole_serve: bool) -> None:
    """Stop the ranking app: all of Serve when this process started it (a local Ray), else only the
    ranking app, so a shared cluster's other applications keep running."""
    from ray import serve

    if whole_serve:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)


def _updated(app) -> bool:
    return all(str(d.status).split(".")[-1] == "HEALTHY" for d in app.deployments.values())


def _reason(app) -> str:
    if app is None:
        return "no status"
    parts = [app.message] if app.message else []
    parts += [f"{n}: {d.message}" for n, d in app.deployments.items() if d.message]
    return " | ".join(parts)[:2000] or "no message"


def reload_ranker(
    config: dict | None, ranker: str, *, timeout_s: float = 120.0, agree: int = 8, **user_config
) -> dict:
    """Hot-reload: apply the live config (as Serve runs it; `config` when Serve has none) with a new
    RankerModel user_config naming `ranker` and a new revision, so only the ranker replicas change
    (`reconfigure`); then wait until `agree` info calls in a row (routed to random replicas) report that
    revision loaded, or one reports it refused. A refused checkpoint is taken out of the config again
    (the previous one re-applied), so replicas started later load the checkpoint that serves.
    Returns the last replica info."""
    config = live_config() or config
    if config is None:
        raise DeployError("the ranking app is not running from a Serve config here; nothing to reload.")
    target = str(ranker)
    # a new revision makes the user_config differ even when the folder's path does not (a retrained
    # checkpoint swapped into the same folder), so Serve calls reconfigure
    revision = str(time.time_ns())
    deploy(with_ranker(config, target, revision=revision, **user_config), timeout_s=timeout_s)
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while True:
        info = ranker_info()
        error = info.get("reload_error") or {}
        if error.get("revision") == revision:
            deploy(config, timeout_s=timeout_s)  # back to the user_config that serves
            return info
        in_a_row = in_a_row + 1 if info.get("revision") == revision else 0
        if in_a_row >= agree:
            return info
        if time.monotonic() > deadline:
            raise DeployError(f"the ranker replicas did not take {target} within {timeout_s:.0f}s: {info}")
        time.sleep(0.1)


def ingress_handle():
    from ray import serve

    return serve.get_app_handle(APP_NAME)


def ranker_info() -> dict:
    from ray import serve

    return serve.get_deployment_handle(RANKER, APP_NAME).info.remote().result(timeout_s=30)


def logger_flush(*, min_rows: int = 0, timeout_s: float = 60.0) -> dict:
    """Write what the impression logger buffers now; with `min_rows`, first wait (bounded) until it has
    received that many rows in all (the ingress sends them after answering, so a few may be in flight)."""
    from ray import serve

    handle = serve.get_deployment_handle(LOGGER, APP_NAME)
    deadline = time.monotonic() + timeout_s
    while True:
        stats = handle.flush.remote().result(timeout_s=timeout_s)
        if stats["rows_received"] >= min_rows or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


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
    "live_config",
    "ranker_info",
    "reload_ranker",
    "remove_app",
    "with_ranker",
]
