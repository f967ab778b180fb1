"""The endpoint's JSON contract: request and response models (pydantic; FastAPI publishes them at /docs).

Bad input is a 4xx naming the field, the value and the limit: pydantic's field errors become 422 through
`validation_problem` (serving/deployments.py), a body over `max_body_bytes` is a 413. An unknown item in
`recent` is not an error (it is ignored and counted in `ignored_recent_items`); an unknown member gets a
cold-start answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationInfo, field_validator

INT64 = dict(ge=-(2**63), le=2**63 - 1)
ItemId = Annotated[StrictInt, Field(**INT64)]  # ids are int64 end to end (catalog, features, logs)


class RecentEngagement(BaseModel):
    """One of the member's latest engagements that the feature store does not hold yet."""

    model_config = ConfigDict(extra="forbid")
    item_id: StrictInt = Field(
        ..., **INT64, description="catalog item id; unknown ids are ignored and counted"
    )
    rating: float | None = Field(
        None,
        ge=1,
        le=5,
        description="explicit rating 1..5; without one the engagement counts as a positive one (rating 4)",
    )
    timestamp_ms: StrictInt | None = Field(None, ge=0, description="unix milliseconds (informational)")


class RankRequest(BaseModel):
    """POST /rank body."""

    model_config = ConfigDict(extra="forbid")
    member_id: StrictInt = Field(..., **INT64, description="the member; an unknown one gets a cold start")
    recent: list[RecentEngagement] = Field(
        default_factory=list,
        max_length=200,
        description="latest engagements not yet in the store, oldest first",
    )
    k: StrictInt = Field(10, ge=1, le=100, description="items to return")
    explore_slots: StrictInt = Field(
        2, ge=0, le=100, description="how many of them come from exploration clusters"
    )
    explore: StrictBool = Field(False, description="Thompson-sample the ranker's last layer for this request")
    content_type: str = Field(
        "movie", min_length=1, max_length=64, description="from the ranker's vocabulary"
    )
    exclude_item_ids: list[ItemId] = Field(
        default_factory=list, max_length=1000, description="items never to return"
    )
    order: Literal["ranked", "shuffled"] = Field(
        "ranked",
        description="shuffled: the same k items in a pseudo-random order seeded by the request id, logged "
        "with shuffled=true: replay-evaluation traffic (LiRank 5.1); the settings' shuffled_share shuffles "
        "that share of all requests too",
    )

    @field_validator("explore_slots")
    @classmethod
    def _slots_within_k(cls, v: int, info: ValidationInfo) -> int:
        k = info.data.get("k")
        if k is not None and v > k:
            raise ValueError(f"explore_slots={v} is more than k={k}; give explore_slots in 0..k")
        return v


class EngagementEvent(BaseModel):
    """What a member did with one served item."""

    model_config = ConfigDict(extra="forbid")
    item_id: ItemId = Field(..., description="the served item (one of the response's items)")
    click: StrictBool = Field(False, description="opened the item")
    like: StrictBool = Field(False, description="liked it")
    share: StrictBool = Field(False, description="shared it")
    skip: StrictBool = Field(False, description="skipped it explicitly")
    dwell_s: float = Field(
        0.0, ge=0, le=86_400, allow_inf_nan=False, description="seconds spent on the item, finite, 0..86400"
    )


class FeedbackRequest(BaseModel):
    """POST /feedback body: engagement with the items of one answered /rank request."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(
        ..., pattern=r"^[0-9a-f]{32}$", description="the /rank response's request_id (32 hex digits)"
    )
    events: list[EngagementEvent] = Field(
        ..., min_length=1, max_length=1000, description="one event per item (more are merged by the join)"
    )


class FeedbackResponse(BaseModel):
    request_id: str
    accepted: int = Field(
        ..., description="events appended to the events log (joined later by jobs.join_feedback)"
    )


class RankedItem(BaseModel):
    item_id: int
    cluster_id: int
    cluster_name: str
    source: str = Field(..., description="'explore' (a cached novel cluster) or 'exploit' (the member's own)")
    position: int
    score: float = Field(
        ..., description="what the list is ordered by: the rank task's probability, or a Thompson sample"
    )
    probabilities: dict[str, float] = Field(
        ..., description="calibrated probability per ranker task, at the reference position"
    )


class ChosenCluster(BaseModel):
    cluster_id: int
    cluster_name: str
    score: float = Field(..., description="the alignment model's score cached for it")


class Exploration(BaseModel):
    level: str = Field(..., description="exact | backoff | global | miss | degraded")
    clusters: list[ChosenCluster]
    cache_version: str | None
    models: dict[str, str] = Field(..., description="the models that chose the clusters (the version's meta)")


class RankResponse(BaseModel):
    request_id: str
    items: list[RankedItem]
    history_key: list[int] | None = Field(..., description="the member's last K clusters; null below K")
    cold_start: bool
    exploration: Exploration
    ranker_version: str
    explored: bool = Field(..., description="scores are Thompson samples")
    order: str = Field(..., description="ranked, or shuffled: replay traffic in a pseudo-random order")
    degraded: bool = Field(..., description="Redis was unreachable: exploit-only answer")
    ignored_recent_items: int
    timings_ms: dict[str, float]
