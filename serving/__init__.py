"""The online half: a Ray Serve endpoint that ranks items inside the LLM-chosen novel clusters cached in
Redis (and the member's own clusters) with a LiRank checkpoint, and logs every impression.

Public API:
    RankRequest, RankResponse             the JSON contract (serving/api.py)
    ServingSettings, RankerUserConfig     app settings and the ranker's hot-reloadable user_config
    OnlineFeatureStore                    members, items and clusters as arrays; the ranker's feature rows
    RankService                           one request start to finish, without Ray (tests, benchmarks)
    build_app                             the Serve application (import path serving.app:build_app)
    deploy, load_config, with_ranker      apply a Serve config (serve_config.yaml) from Python
    RankClient, HandleClient, RankError   clients over HTTP and over a DeploymentHandle

`import serving` loads neither Ray nor torch; the deployments (serving/deployments.py) import Ray.
"""

from serving.api import RankRequest, RankResponse
from serving.client import HandleClient, RankClient, RankError
from serving.service import RankService
from serving.settings import RankerUserConfig, ServingSettings
from serving.store import OnlineFeatureStore


def build_app(args):
    from serving.app import build_app as _build

    return _build(args)


def deploy(config: dict, **kwargs):
    from serving.deploy import deploy as _deploy

    return _deploy(config, **kwargs)


def load_config(path=None):
    from serving.deploy import DEFAULT_CONFIG
    from serving.deploy import load_config as _load

    return _load(path or DEFAULT_CONFIG)


def with_ranker(config: dict, ranker: str, **user_config):
    from serving.deploy import with_ranker as _with

    return _with(config, ranker, **user_config)


__all__ = [
    "HandleClient",
    "OnlineFeatureStore",
    "RankClient",
    "RankError",
    "RankRequest",
    "RankResponse",
    "RankService",
    "RankerUserConfig",
    "ServingSettings",
    "build_app",
    "deploy",
    "load_config",
    "with_ranker",
]
