"""The ranking app: `build_app(args)` wires the three deployments; it is the import path of
serve_config.yaml (`serving.app:build_app`), used by `serve run`/`serve deploy` and by `jobs.serve`.

    RankIngress (FastAPI) --DeploymentHandle--> RankerModel (@serve.batch, user_config = checkpoint)
                          --DeploymentHandle--> ImpressionLogger (impression and event logs, parquet parts)

Replicas, CPUs/GPUs per replica, autoscaling and the ranker's user_config are set per deployment in
the Serve config (`deployments:`); the args below are the app's own settings.
"""

from __future__ import annotations

from pydantic import Field

from serving.settings import ServingSettings

APP_NAME = "ranking"
INGRESS, RANKER, LOGGER = "RankIngress", "RankerModel", "ImpressionLogger"


class AppArgs(ServingSettings):
    """ServingSettings plus how the ranker deployment starts."""

    ranker: str | None = None  # checkpoint for a default user_config (a deployments: user_config wins)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # the ranker replicas' device
    # 'noop': a NoOpRanker (no model work) instead of RankerModel, the baseline of load tests
    scorer: str = Field("lirank", pattern="^(lirank|noop)$")


def build_app(args: AppArgs):
    from serving.deployments import ImpressionLogger, NoOpRanker, RankerModel, RankIngress

    if isinstance(args, dict):
        args = AppArgs(**args)
    settings = ServingSettings(**args.model_dump(exclude={"ranker", "device", "scorer"}))
    ranker = RankerModel if args.scorer == "lirank" else NoOpRanker
    if args.ranker and args.scorer == "lirank":
        ranker = ranker.options(user_config={"ranker": args.ranker})
    return RankIngress.bind(
        ranker.bind(settings.catalog, args.device, settings.history_cap),
        ImpressionLogger.bind(
            settings.log_dir,
            settings.log_flush_rows,
            settings.log_flush_s,
            event_folder=settings.events_dir(),
        ),
        settings.model_dump(),
    )
