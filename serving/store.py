"""The online feature store: what the endpoint knows about members and items, held as numpy arrays.

Built once per replica from a catalog folder (and feedback logs, when given), it answers per request,
with no per-candidate Python loop:

- member -> features (age, gender, occupation), rating history (the ranker's TransAct input: the last
  `history_cap` ratings, item and rounded rating), rated items (never recommended again) and cluster
  history (whose last K clusters are the history key);
- item -> cluster and item features (first genre, year, popularity, the cluster's group and popularity);
- cluster -> candidate items, most rated first.

It computes the same columns as `ranking.datasets.feedback_features` does offline from a feedback log,
from the same definitions (catalog.features), so a checkpoint
trained on feedback logs sees in serving exactly the inputs it saw in training (tests/test_serving.py
checks it row for row). Feedback logs, when given, add each member's clicked and liked items to the
items never recommended again, and liked items to the cluster history (not to the ranker's rating
history, which stays the one training used).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.build import Catalog
from catalog.features import item_features, member_features, member_rating_histories, position_bucket

# the columns `features` returns: the feedback dataset's inputs, plus request id and time for logging
FEATURE_COLUMNS = (
    "member_id",
    "timestamp",
    "item_id",
    "cluster_id",
    "source",
    "content_type",
    "position",
    "position_bucket",
    "genre",
    "cluster_group",
    "gender",
    "occupation",
    "age",
    "year",
    "item_n_ratings",
    "cluster_n_ratings",
    "hist_items",
    "hist_actions",
)
FEEDBACK_DATASET = "feedback-log"  # the dataset whose features the store computes (ranking.datasets.FEEDBACK)


@dataclass
class MemberState:
    """One request's view of the member: the store's history plus the request's `recent` engagements."""

    member_id: int
    known: bool  # the catalog has the member's features
    clusters: np.ndarray  # (C,) cluster history, oldest first, consecutive repeats merged
    history_key: tuple[int, ...] | None  # the last K clusters; None when fewer than K
    hist_items: np.ndarray  # (H,) int64 the ranker's history items, oldest first
    hist_actions: np.ndarray  # (H,) int32 their action codes (the rating)
    excluded: np.ndarray  # sorted unique item ids never to recommend (rated, engaged, excluded)
    ignored_recent: int  # `recent` engagements whose item the catalog does not know

    @property
    def cold_start(self) -> bool:
        return not self.known or self.history_key is None


def _sorted_by(columns: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    order = np.argsort(columns[key], kind="stable")
    return {name: values[order] for name, values in columns.items()}


def _csr(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group `values` by `keys` (stable): (unique keys ascending, offsets, values in key order)."""
    order = np.argsort(keys, kind="stable")
    uniq, counts = np.unique(keys[order], return_counts=True)
    return uniq, np.r_[0, np.cumsum(counts)].astype(np.int64), values[order]


def _find(sorted_keys: np.ndarray, key: int) -> int:
    """Index of `key` in ascending `sorted_keys`, or -1."""
    i = int(np.searchsorted(sorted_keys, key))
    return i if i < len(sorted_keys) and sorted_keys[i] == key else -1


class OnlineFeatureStore:
    """Per-request member state, candidate pools and ranker feature rows. Build with `from_catalog`."""

    def __init__(self, catalog: Catalog, *, feedback_log: pa.Table | None = None, history_cap: int = 100):
        self.k = catalog.history_k
        self.min_rating = float(catalog.manifest.get("config", {}).get("min_rating", 4.0))
        self.history_cap = history_cap
        # items and members, sorted by id (catalog.features: the definitions training uses)
        self.item = _sorted_by(item_features(catalog), "item_id")
        self.item_ids = self.item["item_id"].astype(np.int64)
        self.item_cluster = self.item["cluster_id"].astype(np.int32)
        # items by popularity (most rated first, then id): overall and per cluster
        self.popular_rows = np.lexsort((self.item_ids, -self.item["n_ratings"])).astype(np.int64)
        self.cluster_offsets, self.cluster_rows = self._by_cluster(catalog.n_clusters)
        self.cluster_names = catalog.cluster_names()
        self.member = _sorted_by(member_features(catalog), "member_id")
        self.member_ids = self.member["member_id"].astype(np.int64)
        # the ranker's rating history and the items each member rated
        self.hist_members, self.hist_offsets, self.hist_items, self.hist_actions = member_rating_histories(
            catalog, history_cap
        )
        inter = catalog.interactions
        rated_m, rated_i = inter["member_id"].to_numpy(), inter["item_id"].to_numpy().astype(np.int64)
        # cluster histories
        h = catalog.histories
        hm = h["member_id"].to_numpy()
        lens = np.array([len(x) for x in h["clusters"].to_pylist()], dtype=np.int64)
        h_clusters = h["clusters"].combine_chunks() if h.num_rows else pa.array([], pa.list_(pa.int32()))
        flat = h_clusters.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
        member_of = np.repeat(hm, lens)
        if feedback_log is not None and feedback_log.num_rows:
            log = feedback_log.sort_by("timestamp")
            engaged = np.asarray(log["click"].to_numpy(zero_copy_only=False), bool) | np.asarray(
                log["like"].to_numpy(zero_copy_only=False), bool
            )
            liked = np.asarray(log["like"].to_numpy(zero_copy_only=False), bool)
            lm, li = log["member_id"].to_numpy(), log["item_id"].to_numpy().astype(np.int64)
            known = self._item_rows(li) >= 0
            rated_m = np.r_[rated_m, lm[engaged & known]]
            rated_i = np.r_[rated_i, li[engaged & known]]
            keep = liked & known
            member_of = np.r_[member_of, lm[keep]]
            flat = np.r_[flat, self.item_cluster[self._item_rows(li[keep])]]
        self.rated_members, self.rated_offsets, rated_values = _csr(rated_m, rated_i)
        # sort items within each member, so a member's slice is ready for np.isin and union
        seg = np.repeat(np.arange(len(self.rated_members)), np.diff(self.rated_offsets))
        self.rated_items = rated_values[np.lexsort((rated_values, seg))]
        self.cluster_members, self.cluster_hist_offsets, self.cluster_hist = _csr(member_of, flat)

    @classmethod
    def from_catalog(
        cls,
        catalog_dir: str | os.PathLike,
        *,
        feedback_logs: Sequence[str | os.PathLike] = (),
        history_cap: int = 100,
    ) -> OnlineFeatureStore:
        from catalog.logs import read_feedback_log

        catalog = Catalog.load(catalog_dir)
        logs = [read_feedback_log(Path(d)) for d in feedback_logs]
        log = pa.concat_tables(logs) if logs else None
        return cls(catalog, feedback_log=log, history_cap=history_cap)

    def _by_cluster(self, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets (M + 1,), item rows): cluster c's items, most rated first, are rows[offsets[c]:offsets[c + 1]]."""
        cl = self.item_cluster[self.popular_rows].astype(np.int64)
        counts = np.bincount(cl, minlength=n_clusters)
        return np.r_[0, np.cumsum(counts)].astype(np.int64), self.popular_rows[np.argsort(cl, kind="stable")]

    # ------------------------------------------------------------------ lookups

    def _item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item id in the store, -1 for an unknown id."""
        item_ids = np.asarray(item_ids, np.int64)
        pos = np.searchsorted(self.item_ids, item_ids).clip(0, max(len(self.item_ids) - 1, 0))
        found = self.item_ids[pos] == item_ids if len(self.item_ids) else np.zeros(len(item_ids), bool)
        return np.where(found, pos, -1)

    def cluster_items(self, cluster: int) -> np.ndarray:
        """Item rows of a cluster, most rated first (empty for an unknown cluster)."""
        if not 0 <= cluster < len(self.cluster_offsets) - 1:
            return np.zeros(0, np.int64)
        return self.cluster_rows[self.cluster_offsets[cluster] : self.cluster_offsets[cluster + 1]]

    def cluster_name(self, cluster: int) -> str:
        return self.cluster_names[cluster] if 0 <= cluster < len(self.cluster_names) else f"cluster-{cluster}"

    def member_state(
        self,
        member_id: int,
        recent: Sequence[tuple[int, float | None]] = (),
        exclude_item_ids: Sequence[int] = (),
    ) -> MemberState:
        """The member's history, key and exclusions, with `recent` (item id, rating or None; oldest
        first) appended: every recent item joins the rating history (a missing rating counts as
        `min_rating`, a positive engagement) and the exclusions; positive ones extend the cluster history."""
        member_id = int(member_id)
        known = _find(self.member_ids, member_id) >= 0
        h = _find(self.hist_members, member_id)
        hist_items = (
            self.hist_items[self.hist_offsets[h] : self.hist_offsets[h + 1]]
            if h >= 0
            else np.zeros(0, np.int64)
        )
        hist_actions = (
            self.hist_actions[self.hist_offsets[h] : self.hist_offsets[h + 1]]
            if h >= 0
            else np.zeros(0, np.int32)
        )
        c = _find(self.cluster_members, member_id)
        clusters = (
            self.cluster_hist[self.cluster_hist_offsets[c] : self.cluster_hist_offsets[c + 1]]
            if c >= 0
            else np.zeros(0, np.int32)
        )
        r = _find(self.rated_members, member_id)
        rated = (
            self.rated_items[self.rated_offsets[r] : self.rated_offsets[r + 1]]
            if r >= 0
            else np.zeros(0, np.int64)
        )
        ignored = 0
        if len(recent):
            ids = np.array([i for i, _ in recent], np.int64)
            ratings = np.array([self.min_rating if x is None else x for _, x in recent], np.float64)
            rows = self._item_rows(ids)
            ok = rows >= 0
            ignored = int((~ok).sum())
            ids, rows, ratings = ids[ok], rows[ok], ratings[ok]
            hist_items = np.r_[hist_items, ids][-self.history_cap :]
            hist_actions = np.r_[hist_actions, ratings.round().astype(np.int32)][-self.history_cap :]
            rated = np.r_[rated, ids]
            clusters = np.r_[clusters, self.item_cluster[rows[ratings >= self.min_rating]]]
        clusters = _merge_repeats(clusters)
        if len(exclude_item_ids):
            rated = np.r_[rated, np.asarray(exclude_item_ids, np.int64)]
        excluded = np.unique(rated)
        key = tuple(int(x) for x in clusters[-self.k :]) if len(clusters) >= self.k else None
        return MemberState(member_id, known, clusters, key, hist_items, hist_actions, excluded, ignored)

    # ------------------------------------------------------------------ features

    def features(
        self,
        state: MemberState,
        item_rows: np.ndarray,
        sources: np.ndarray,
        *,
        content_type: str,
        position: int,
        timestamp_ms: int,
    ) -> pa.Table:
        """The ranker's input rows for `item_rows` (one vectorised build): FEATURE_COLUMNS, every row
        at the same `position` (the reference position) and sharing the member's history."""
        n = len(item_rows)
        rows = np.asarray(item_rows, np.int64)
        m = _find(self.member_ids, state.member_id)
        item, member = self.item, self.member
        h = len(state.hist_items)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * h)
        return pa.table(
            {
                "member_id": pa.array(np.full(n, state.member_id, np.int64)),
                "timestamp": pa.array(np.full(n, timestamp_ms, np.int64)),
                "item_id": pa.array(self.item_ids[rows]),
                "cluster_id": pa.array(self.item_cluster[rows]),
                "source": pa.array(sources, pa.string()),
                "content_type": pa.array([content_type] * n, pa.string()),
                "position": pa.array(np.full(n, position, np.float32)),
                "position_bucket": pa.array(
                    np.full(n, position_bucket(np.array([position]))[0], object), pa.string()
                ),
                "genre": pa.array(item["genre"][rows], pa.string()),
                "cluster_group": pa.array(item["cluster_group"][rows], pa.string()),
                "gender": pa.array([member["gender"][m] if m >= 0 else None] * n, pa.string()),
                "occupation": pa.array([member["occupation"][m] if m >= 0 else None] * n, pa.string()),
                "age": pa.array(np.full(n, member["age"][m] if m >= 0 else np.nan, np.float32)),
                "year": pa.array(item["year"][rows], pa.float32()),
                "item_n_ratings": pa.array(item["n_ratings"][rows], pa.float32()),
                "cluster_n_ratings": pa.array(item["cluster_n_ratings"][rows], pa.float32()),
                "hist_items": pa.ListArray.from_arrays(
                    offsets, pa.array(np.tile(state.hist_items, n), pa.int64())
                ),
                "hist_actions": pa.ListArray.from_arrays(
                    offsets, pa.array(np.tile(state.hist_actions, n).astype(np.int32), pa.int32())
                ),
            }
        )

    def check_ranker_schema(self, schema) -> None:
        """Refuse a ranker that reads columns this store does not compute (e.g. a MovieLens-CTR checkpoint)."""
        missing = [c for c in schema.columns if c not in FEATURE_COLUMNS]
        if schema.dataset != FEEDBACK_DATASET or missing:
            raise ValueError(
                f"the ranker was trained on dataset {schema.dataset!r} and reads column(s) {missing or schema.columns} "
                f"the online feature store does not compute; serve a checkpoint trained with "
                f"`jobs.train_ranker --dataset feedback` (it reads {list(FEATURE_COLUMNS)})."
            )


def _merge_repeats(clusters: np.ndarray) -> np.ndarray:
    clusters = np.asarray(clusters, np.int32)
    if len(clusters) < 2:
        return clusters
    return clusters[np.r_[True, clusters[1:] != clusters[:-1]]]
