"""The member simulator: impressions in, feedback events (FEEDBACK_LOG rows) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.build import Catalog
from catalog.movielens import DataNotFoundError, load_movielens_100k, movielens_dir
from catalog.schemas import FEEDBACK_LOG, SOURCES
from sim.affinity import AffinityConfig, AffinityModel, fit_affinity
from sim.response import ResponseConfig, respond

# what a batch of impressions must carry: the FEEDBACK_LOG columns the server knows before any response
IMPRESSION_COLUMNS = (
    "request_id",
    "member_id",
    "timestamp",
    "history_key",
    "item_id",
    "cluster_id",
    "source",
    "position",
    "content_type",
)


@dataclass(frozen=True)
class SimConfig:
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    seed: int = 0  # same seed and same impressions give the same log


def _source_dir(saved: str | None) -> Path:
    """The MovieLens folder the catalog was built from if it is still there (the manifest keeps an absolute
    path, which another machine may lack), else the usual lookup ($ML100K_DIR, the recbole copy)."""
    if saved:
        try:
            return movielens_dir(saved)
        except DataNotFoundError:
            pass
    return movielens_dir()


class MemberSimulator:
    """Stands in for real members. Fitted on all MovieLens ratings, held-out ones included.

    Build it with `MemberSimulator.for_catalog(catalog)`; call `respond(impressions)` with a table of
    IMPRESSION_COLUMNS; it returns FEEDBACK_LOG rows in the same order.
    """

    def __init__(
        self,
        affinity: AffinityModel,
        item_ids: np.ndarray,
        item_cluster: np.ndarray,
        n_clusters: int,
        config: SimConfig,
    ):
        self.affinity = affinity
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.n_clusters = n_clusters
        # popularity-weighted item weights per cluster, in the affinity model's item order
        rows = affinity.item_index(item_ids)
        self._item_cluster = np.empty(len(affinity.item_ids), dtype=np.int64)
        self._item_cluster[rows] = item_cluster
        self._item_weight = np.bincount(rows, minlength=len(affinity.item_ids)).astype(float)

    @classmethod
    def for_catalog(cls, catalog: Catalog, config: SimConfig | None = None) -> MemberSimulator:
        """Fit on every rating of the catalog's source data: the seen part and the held-out part."""
        config = config or SimConfig()
        source = catalog.manifest.get("source", {})
        if source.get("dataset") != "MovieLens-100K":
            raise ValueError(
                f"catalog source {source.get('dataset')!r}: the simulator is grounded in "
                "MovieLens-100K ratings; build the catalog with jobs.build_catalog."
            )
        ratings = load_movielens_100k(_source_dir(source.get("path"))).interactions
        ids, cid = catalog.item_cluster()
        return cls(fit_affinity(ratings, config.affinity), ids, cid, catalog.n_clusters, config)

    def like_probability(self, member_ids, item_ids) -> np.ndarray:
        return self.affinity.like_probability(np.asarray(member_ids), np.asarray(item_ids))

    def cluster_affinity(self, member_ids) -> np.ndarray:
        """(n, M) true affinity of each member to every cluster: the popularity-weighted mean P(like)."""
        rows = self.affinity.member_index(np.asarray(member_ids))
        like = self.affinity.like_matrix(rows)  # (n, I)
        w = np.zeros((len(self.affinity.item_ids), self.n_clusters))
        w[np.arange(len(w)), self._item_cluster] = self._item_weight + 1.0
        return (like @ w) / w.sum(0)

    def respond(self, impressions: pa.Table) -> pa.Table:
        missing = [c for c in IMPRESSION_COLUMNS if c not in impressions.column_names]
        if missing:
            raise ValueError(
                f"impressions: missing column(s) {missing}; present {impressions.column_names}. "
                f"Pass every column of sim.simulator.IMPRESSION_COLUMNS."
            )
        bad_src = set(impressions["source"].to_pylist()) - set(SOURCES)
        if bad_src:
            raise ValueError(
                f"impressions, column 'source': unknown value(s) {sorted(bad_src)}; use {SOURCES}."
            )
        position = impressions["position"].to_numpy(zero_copy_only=False)
        if len(position) and position.min() < 0:
            raise ValueError("impressions, column 'position': negative positions; positions are 0-based.")
        p = self.like_probability(impressions["member_id"].to_numpy(), impressions["item_id"].to_numpy())
        content = np.asarray(impressions["content_type"].to_pylist(), dtype=object)
        r = respond(p, position.astype(np.float64), content, self.config.response, self.rng)
        cols = {c: impressions[c] for c in IMPRESSION_COLUMNS}
        cols.update(click=r.click, like=r.like, share=r.share, skip=r.skip, dwell_s=r.dwell_s)
        return pa.table(
            {
                f.name: pa.array(cols[f.name], f.type)
                if isinstance(cols[f.name], np.ndarray)
                else cols[f.name].cast(f.type)
                for f in FEEDBACK_LOG
            },
            schema=FEEDBACK_LOG,
        )
