"""The online half: a Ray Serve endpoint that ranks items inside the LLM-chosen novel clusters cached in
Redis (and the member's own clusters) with a LiRank checkpoint, and logs every impression.

Public API:
    RankRequest, RankResponse             the JSON contract (serving/api.py)
    ServingSettings, RankerUserConfig     app settings and the ranker's hot-reloadable user_config
    OnlineFeatureStore                    members, items and clusters as arrays; the ranker's feature rows
    RankService                           one request start to finish, without Ray (tests, benchmarks)
    build_app                             the Serve application (import path serving.app:build_app)
    deploy, reload_ranker, load_config,   apply a Serve config (serve_config.yaml) from Python; hot reload;
    with_ranker, app_entry,               its parts; the running app's ranker, logger flush and removal
    deployment_entry, DEFAULT_CONFIG,
    ranker_info, logger_flush, remove_app
    RankClient, HandleClient, RankError,  clients over HTTP and over a DeploymentHandle; many requests at once
    rank_many

`import serving` loads neither Ray nor torch; the deployments (serving/deployments.py) import Ray.
"""

from serving.api import RankRequest, RankResponse
from serving.app import build_app
from serving.client import HandleClient, RankClient, RankError, rank_many
from serving.deploy import (
    DEFAULT_CONFIG,
    app_entry,
    deploy,
    deployment_entry,
    load_config,
    logger_flush,
    ranker_info,
    reload_ranker,
    remove_app,
    with_ranker,
)
from serving.service import RankService
from serving.settings import RankerUserConfig, ServingSettings
from serving.store import OnlineFeatureStore

__all__ = [
    "DEFAULT_CONFIG",
    "app_entry",
    "deployment_entry",
    "logger_flush",
    "rank_many",
    "ranker_info",
    "remove_app",
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
    "reload_ranker",
    "with_ranker",
]
