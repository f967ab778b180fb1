"""Candidate generation: the items the ranker scores for one request (hierarchical planning: the LLMs
chose the clusters offline, the ranker chooses items inside them).

- explore: the `explore_items_per_cluster` most rated items of each cached novel cluster;
- exploit: the same from each of the member's `exploit_clusters` most recent clusters;
- popular: when the exploit pool is smaller than the slate (a cold start: an unknown member, or one
  with no positive engagement), the most rated items outside the explore clusters, labelled exploit.

Items the member rated, engaged with (in `recent` or the feedback logs) or asked to exclude are never
candidates. One numpy pass per cluster (a handful per request, over the first n + |excluded| rows of
each), no per-item Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.store import MemberState, OnlineFeatureStore


@dataclass
class Candidates:
    rows: np.ndarray  # (N,) item rows in the store
    source: np.ndarray  # (N,) 'explore' | 'exploit'
    cluster: np.ndarray  # (N,) cluster id of each item

    def __len__(self) -> int:
        return len(self.rows)


def _fresh(rows: np.ndarray, store: OnlineFeatureStore, excluded: np.ndarray, n: int) -> np.ndarray:
    """The first n of `rows` whose item is not excluded (`excluded`: sorted item ids, MemberState's)."""
    rows = rows[: n + len(excluded)]  # at most len(excluded) of them can be dropped
    if not len(excluded):
        return rows[:n]
    ids = store.item_ids[rows]
    at = np.searchsorted(excluded, ids).clip(max=len(excluded) - 1)
    return rows[excluded[at] != ids][:n]


def generate(
    store: OnlineFeatureStore,
    state: MemberState,
    explore_clusters: Sequence[int],
    *,
    explore_items_per_cluster: int,
    exploit_clusters: int,
    exploit_items_per_cluster: int,
    popular_items: int,
    min_exploit: int,
) -> Candidates:
    """Explore, exploit and (when the exploit pool holds fewer than `min_exploit`) popular candidates."""
    explore = [
        _fresh(store.cluster_items(int(c)), store, state.excluded, explore_items_per_cluster)
        for c in explore_clusters
    ]
    recent = list(dict.fromkeys(int(c) for c in state.clusters[::-1]))[:exploit_clusters]
    recent = [c for c in recent if c not in set(explore_clusters)]
    exploit = [
        _fresh(store.cluster_items(c), store, state.excluded, exploit_items_per_cluster) for c in recent
    ]
    n_exploit = sum(len(x) for x in exploit)
    if n_exploit < min_exploit:
        taken = np.concatenate([*explore, *exploit]) if explore or exploit else np.zeros(0, np.int64)
        pool = store.popular_rows[~np.isin(store.item_cluster[store.popular_rows], list(explore_clusters))]
        pool = pool[~np.isin(pool, taken)]
        exploit.append(_fresh(pool, store, state.excluded, popular_items))
    e_rows = np.concatenate(explore) if explore else np.zeros(0, np.int64)
    x_rows = np.concatenate(exploit) if exploit else np.zeros(0, np.int64)
    rows = np.r_[e_rows, x_rows].astype(np.int64)
    source = np.r_[np.full(len(e_rows), "explore", object), np.full(len(x_rows), "exploit", object)]
    return Candidates(rows, source, store.item_cluster[rows].astype(np.int64))
