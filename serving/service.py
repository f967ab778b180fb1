"""One ranking request, start to finish, independent of Ray Serve (the ingress deployment wraps it):

member -> history (the store's plus `recent`) -> history key -> one Redis round trip for the cached
best-of-n novel clusters (history clusters excluded) -> candidates in those clusters and the member's
own -> feature rows (one vectorised build) -> ranker scores (calibrated, at the reference position)
-> slate -> impression log -> response.

The scorer and the impression sink are injected: the Serve deployments in production, a Ranker in
process for tests and the latency bench's inner bound.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from catalog.schemas import IMPRESSION_LOG
from serving.api import RankRequest
from serving.candidates import generate
from serving.settings import ServingSettings
from serving.slate import assemble, explore_positions
from serving.store import OnlineFeatureStore


class RequestError(ValueError):
    """A client error found after validation (e.g. a content type the ranker does not know): a 422."""

    def __init__(self, field: str, value, message: str):
        super().__init__(message)
        self.field, self.value = field, value


class ScoringFailed(RuntimeError):
    """The ranker could not score this request's rows (a server-side error: 503)."""


@dataclass
class ScoreRequest:
    """What the ingress sends the ranker deployment: one request's candidate rows."""

    features: pa.Table
    explore: bool
    seed: int  # the Thompson draw's seed (from the request id, so a logged draw can be replayed)
    content_type: str

    @property
    def rows(self) -> int:
        return self.features.num_rows


@dataclass
class ScoreResult:
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (N,)
    score: np.ndarray | None = None  # (N,)
    explored: bool = False
    ranker_version: str = ""
    error: dict | None = None  # {'field', 'value', 'message'} for a client error
    failure: str | None = None  # the ranker failed on this request (a server-side error)


def check_content_type(schema, content_type: str) -> dict | None:
    """A client error when the ranker's content_type vocabulary does not hold the value, else None."""
    names = [f.name for f in schema.sparse]
    if "content_type" not in names:
        return None
    vocab = schema.field("content_type").vocab
    if content_type in vocab:
        return None
    return {
        "field": "content_type",
        "value": content_type,
        "message": f"content_type={content_type!r} is not in the ranker's vocabulary {list(vocab)}; use one of them.",
    }


def score_batch(ranker, requests: list[ScoreRequest]) -> list[ScoreResult]:
    """Score several requests in one forward pass; each Thompson draw has its own seeded generator."""
    import torch

    results: list[ScoreResult | None] = [None] * len(requests)
    good = []
    for i, r in enumerate(requests):
        err = check_content_type(ranker.schema, r.content_type)
        if err:
            results[i] = ScoreResult(error=err, ranker_version=ranker.version or "")
        else:
            good.append(i)
    if good:
        table = pa.concat_tables([requests[i].features for i in good])
        gens = []
        for i in good:
            g = torch.Generator()
            g.manual_seed(requests[i].seed)
            gens.append(g)
        out = ranker.score_requests(
            table,
            [requests[i].rows for i in good],
            explore=[requests[i].explore for i in good],
            generators=gens,
        )
        for i, res in zip(good, out, strict=True):
            results[i] = ScoreResult(
                probabilities={t: res[t] for t in ranker.schema.tasks},
                score=res["score"],
                explored=res["explored"],
                ranker_version=ranker.version or "",
            )
    return results


class Timer:
    def __init__(self):
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round((now - self._t) * 1000, 3)
        self._t = now


class RankService:
    """Args:
    store: the online feature store.  cache: a GuardedCache (or anything with its async `lookup`).
    scorer: async ScoreRequest -> ScoreResult (the ranker deployment).  sink: async impression
    table -> None (the impression logger).  settings: ServingSettings.  metrics: serving.metrics.Metrics or None.
    """

    def __init__(
        self,
        store: OnlineFeatureStore,
        cache,
        scorer: Callable[[ScoreRequest], Awaitable[ScoreResult]],
        sink: Callable[[pa.Table], None],
        settings: ServingSettings,
        metrics=None,
    ):
        self.store, self.cache, self.scorer, self.sink = store, cache, scorer, sink
        self.settings, self.metrics = settings, metrics

    async def rank(self, req: RankRequest) -> dict:
        s, timer = self.settings, Timer()
        request_id = uuid.uuid4().hex
        now_ms = time.time_ns() // 1_000_000
        state = self.store.member_state(
            req.member_id, [(e.item_id, e.rating) for e in req.recent], req.exclude_item_ids
        )
        timer.lap("history")
        hit = await self.cache.lookup(state.history_key, [int(c) for c in state.clusters], s.explore_clusters)
        degraded = hit is None
        level = "degraded" if degraded else hit.level
        chosen = [] if degraded or req.explore_slots == 0 else list(hit.clusters)
        timer.lap("cache")
        cands = generate(
            self.store,
            state,
            chosen,
            explore_items_per_cluster=s.explore_items_per_cluster,
            exploit_clusters=s.exploit_clusters,
            exploit_items_per_cluster=s.exploit_items_per_cluster,
            popular_items=s.popular_items,
            min_exploit=req.k,
        )
        timer.lap("candidates")
        features = self.store.features(
            state,
            cands.rows,
            cands.source,
            content_type=req.content_type,
            position=s.reference_position,
            timestamp_ms=now_ms,
        )
        timer.lap("features")
        result = await self.scorer(
            ScoreRequest(features, req.explore, int(request_id[:15], 16), req.content_type)
        )
        if result.error:
            raise RequestError(**result.error)
        if result.failure:
            raise ScoringFailed(f"the ranker failed on this request: {result.failure}")
        if len(cands) and not (
            np.isfinite(result.score).all()
            and all(np.isfinite(p).all() for p in result.probabilities.values())
        ):
            raise ScoringFailed(
                f"the ranker {result.ranker_version} gave non-finite scores; reload a sound checkpoint."
            )
        timer.lap("rank")
        item_ids = self.store.item_ids[cands.rows]
        positions = explore_positions(req.k, req.explore_slots, s.explore_positions)
        slate = assemble(cands, result.score, item_ids, k=req.k, positions=positions)
        shuffled = req.order == "shuffled" or in_share(request_id, s.shuffled_share)
        if shuffled:  # replay traffic: the chosen items, in an order no model had a say in
            rng = np.random.default_rng(int(request_id[:16], 16))
            slate = [slate[i] for i in rng.permutation(len(slate))]
        timer.lap("slate")
        key = list(state.history_key) if state.history_key is not None else None
        items = [
            {
                "item_id": int(item_ids[i]),
                "cluster_id": int(cands.cluster[i]),
                "cluster_name": self.store.cluster_name(int(cands.cluster[i])),
                "source": str(cands.source[i]),
                "position": pos,
                "score": float(result.score[i]),
                "probabilities": {t: float(p[i]) for t, p in result.probabilities.items()},
            }
            for pos, i in enumerate(slate)
        ]
        cache_version = None if degraded else hit.version
        self.sink(
            impressions(
                request_id,
                req,
                now_ms,
                key or [int(c) for c in state.clusters[-self.store.k :]],
                items,
                result,
                level,
                cache_version,
                shuffled,
            )
        )
        timer.lap("log")
        response = {
            "request_id": request_id,
            "items": items,
            "history_key": key,
            "cold_start": state.cold_start,
            "exploration": {
                "level": level,
                "clusters": [
                    {"cluster_id": c, "cluster_name": self.store.cluster_name(c), "score": sc}
                    for c, sc in ([] if degraded else zip(hit.clusters, hit.scores, strict=True))
                    if c in chosen
                ],
                "cache_version": cache_version,
                "models": {} if degraded else {m: hit.models[m] for m in MODEL_META if m in hit.models},
            },
            "ranker_version": result.ranker_version,
            "explored": result.explored,
            "order": "shuffled" if shuffled else "ranked",
            "degraded": degraded,
            "ignored_recent_items": state.ignored_recent,
            "timings_ms": timer.ms,
        }
        if self.metrics is not None:
            self.metrics.observe(response, n_candidates=len(cands))
        return response


def in_share(request_id: str, share: float) -> bool:
    """Whether a request falls in the `share` of all traffic picked by its id (a uuid4 in hex: its last 15
    hex digits are uniform; the 13th and 17th are its version and variant)."""
    return int(request_id[17:], 16) < share * 16**15


# the cache version's meta fields reported as "the models that chose them"
MODEL_META = (
    "novelty_model",
    "alignment_model",
    "novelty_path",
    "alignment_path",
    "live_ms",
    "catalog_signature",
)


def impressions(
    request_id, req, now_ms, key, items, result, level, cache_version, shuffled=False
) -> pa.Table:
    """IMPRESSION_LOG rows of one served slate."""
    n = len(items)
    cols = {
        "request_id": [request_id] * n,
        "member_id": [req.member_id] * n,
        "timestamp": [now_ms] * n,
        "history_key": [key] * n,
        "item_id": [it["item_id"] for it in items],
        "cluster_id": [it["cluster_id"] for it in items],
        "source": [it["source"] for it in items],
        "position": [it["position"] for it in items],
        "content_type": [req.content_type] * n,
        "score": [it["score"] for it in items],
        "explored": [result.explored] * n,
        "cache_level": [level] * n,
        "cache_version": [cache_version] * n,
        "ranker_version": [result.ranker_version] * n,
        "shuffled": [bool(shuffled)] * n,
    }
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in IMPRESSION_LOG}, schema=IMPRESSION_LOG)


def feedback_events(req, now_ms: int) -> pa.Table:
    """ENGAGEMENT_EVENTS rows of one POST /feedback body (a FeedbackRequest)."""
    from catalog import schemas

    n = len(req.events)
    cols = {
        "request_id": [req.request_id] * n,
        "item_id": [e.item_id for e in req.events],
        "received_ms": [now_ms] * n,
        **{f: [getattr(e, f) for e in req.events] for f in ("click", "like", "share", "skip", "dwell_s")},
    }
    schema = schemas.ENGAGEMENT_EVENTS
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
