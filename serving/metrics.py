"""The endpoint's own metrics (Ray's metrics API, exported with Ray Serve's by each node's metrics
agent, e.g. to Prometheus). Listed in README:

    ranking_requests_total{outcome}        ok | client_error | unavailable | server_error
    ranking_degraded_total                 answers without Redis (exploit-only)
    ranking_cold_start_total               unknown members or fewer than K clusters
    ranking_cache_level_total{level}       exact | backoff | global | miss | degraded
    ranking_items_total{source}            served items: explore | exploit (explore share = explore / all)
    ranking_explore_share                  histogram: explore items / items per answer
    ranking_candidates                     histogram: candidate rows scored per request
    ranking_stage_latency_ms{stage}        histogram: history, cache, candidates, features, rank, slate, log
"""

from __future__ import annotations

LATENCY_MS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


class Metrics:
    def __init__(self):
        from ray.serve import metrics as m

        self.requests = m.Counter(
            "ranking_requests_total", "ranking requests by outcome", tag_keys=("outcome",)
        )
        self.degraded = m.Counter("ranking_degraded_total", "answers given without Redis (exploit-only)")
        self.cold_start = m.Counter("ranking_cold_start_total", "cold-start answers")
        self.level = m.Counter("ranking_cache_level_total", "cache lookups by level", tag_keys=("level",))
        self.items = m.Counter("ranking_items_total", "served items by source", tag_keys=("source",))
        self.explore_share = m.Histogram(
            "ranking_explore_share",
            "explore items per answer",
            boundaries=[0.01, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
        )
        self.candidates = m.Histogram(
            "ranking_candidates", "candidate rows per request", boundaries=[10, 25, 50, 100, 200, 400, 800]
        )
        self.latency = m.Histogram(
            "ranking_stage_latency_ms", "per-stage latency", boundaries=LATENCY_MS, tag_keys=("stage",)
        )

    def outcome(self, outcome: str) -> None:
        self.requests.inc(1, tags={"outcome": outcome})

    def observe(self, response: dict, *, n_candidates: int) -> None:
        if response["degraded"]:
            self.degraded.inc(1)
        if response["cold_start"]:
            self.cold_start.inc(1)
        self.level.inc(1, tags={"level": response["exploration"]["level"]})
        items = response["items"]
        explore = sum(it["source"] == "explore" for it in items)
        if explore:
            self.items.inc(explore, tags={"source": "explore"})
        if len(items) - explore:
            self.items.inc(len(items) - explore, tags={"source": "exploit"})
        self.explore_share.observe(explore / len(items) if items else 0.0)
        self.candidates.observe(n_candidates)
        for stage, ms in response["timings_ms"].items():
            self.latency.observe(ms, tags={"stage": stage})
