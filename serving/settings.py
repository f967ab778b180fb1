"""Settings of the ranking app: the arguments of `serving.app.build_app` (the `args` of serve_config.yaml)
and the ranker deployment's `user_config` (what a hot reload changes)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServingSettings(BaseModel):
    """What the ingress needs; fixed for the life of a deployment (a change redeploys the replicas)."""

    model_config = ConfigDict(extra="forbid")
    catalog: str  # catalog folder: items, clusters, members, ratings, histories
    log_dir: str  # the impression log goes to <log_dir> as parquet parts (IMPRESSION_LOG)
    # POST /feedback events go here as parquet parts (ENGAGEMENT_EVENTS); None: <log_dir>/../events
    event_log_dir: str | None = None
    feedback_logs: list[str] = []  # feedback-log folders whose clicks and likes the store adds
    namespace: str = "explore"  # the Redis cache namespace (explore/cache/)
    # Redis URL of the cache; None: $REDIS_URL in the replica's environment (keeps the password out of
    # the app config)
    redis_url: str | None = None
    redis_timeout_ms: float = Field(50.0, gt=0, le=10_000)  # connect and read timeout, no retries
    breaker_failures: int = Field(3, ge=1)  # consecutive Redis failures that open the circuit
    breaker_cooldown_s: float = Field(2.0, gt=0)  # open circuit: exploit-only answers for this long
    explore_clusters: int = Field(4, ge=1, le=32)  # cached clusters read per request
    explore_items_per_cluster: int = Field(20, ge=1, le=1000)  # candidates from each of them
    exploit_clusters: int = Field(4, ge=1, le=32)  # the member's most recent clusters used
    exploit_items_per_cluster: int = Field(20, ge=1, le=1000)  # candidates from each of them
    popular_items: int = Field(100, ge=1, le=5000)  # cold start (and top-up) candidates: most rated items
    history_cap: int = Field(100, ge=1)  # ratings kept per member for the ranker's history (as in training)
    reference_position: int = Field(0, ge=0)  # every candidate is scored as if shown here
    explore_positions: list[int] | None = None  # slots of explore items; None: spread down the list
    # share of requests served in a pseudo-random order (chosen by request id) and logged shuffled=true:
    # the replay-evaluation traffic of LiRank 5.1 (requests can also ask for it: order="shuffled")
    shuffled_share: float = Field(0.0, ge=0, le=1)
    max_body_bytes: int = Field(256 * 1024, ge=1024)  # larger request bodies get a 413
    log_flush_rows: int = Field(5000, ge=1)  # the impression logger writes a part at this many rows
    log_flush_s: float = Field(2.0, gt=0)  # ... or after this many seconds

    @model_validator(mode="after")
    def _positions(self) -> ServingSettings:
        if self.redis_url is not None:
            from serving.cache_client import has_credentials

            if has_credentials(self.redis_url):
                raise ValueError(
                    "redis_url carries a password; app settings are visible in Serve's config and status. Put "
                    "the URL in REDIS_URL in the replicas' environment instead, and leave redis_url unset."
                )
        if self.explore_positions is not None and (
            any(p < 0 for p in self.explore_positions)
            or len(set(self.explore_positions)) != len(self.explore_positions)
        ):
            raise ValueError(
                f"explore_positions={self.explore_positions}: give distinct slots >= 0, or null to spread them."
            )
        return self

    def events_dir(self) -> str:
        """Where the engagement events go: event_log_dir, or an `events` folder beside the impression log."""
        from pathlib import Path

        return self.event_log_dir or str(Path(self.log_dir).parent / "events")

    def max_candidates(self) -> int:
        """The most candidate rows one request can have (bounds the ranker's batch)."""
        return (
            self.explore_clusters * self.explore_items_per_cluster
            + self.exploit_clusters * self.exploit_items_per_cluster
            + self.popular_items
        )


class RankerUserConfig(BaseModel):
    """The ranker deployment's user_config: the checkpoint and batching, changed live by `reconfigure`."""

    model_config = ConfigDict(extra="forbid")
    ranker: str  # checkpoint folder (model.safetensors + JSON; serving.pt2 is never loaded)
    batching: bool = True  # batch rows across concurrent requests (@serve.batch)
    max_batch_rows: int = Field(1024, ge=1)  # a batch holds at most this many candidate rows
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)  # how long a batch waits to fill
    quantize: bool = False  # int8 middle-max embedding tables (CPU inference)
    revision: str = (
        ""  # any change reloads `ranker` even when its path is unchanged (jobs.serve reload sets it)
    )
