"""Policies that decide what a simulated member is shown: baselines and round 0 of the loop.

Cluster policies pick novel clusters (never in the member's history) for the explore slots;
`build_impressions` turns their picks, plus the member's own recent clusters for the exploit slots,
into a slate of items. Only `OracleNovelCluster` reads the simulator's hidden affinities: it is an
upper bound for evaluation, never a policy for the system.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from catalog.build import Catalog


class RandomNovelCluster:
    """Uniformly random clusters outside the member's history."""

    name = "random"

    def __init__(self, n_clusters: int):
        self.n_clusters = n_clusters

    def choose(self, member_id: int, history: list[int], n: int, rng: np.random.Generator) -> list[int]:
        novel = np.setdiff1d(np.arange(self.n_clusters), history)
        return rng.permutation(novel)[:n].tolist()


class MostFrequentNextCluster:
    """The clusters that most often followed the member's last cluster in everyone's histories
    (then the globally most frequent), outside the member's history (`novel_only=False`: wherever they are,
    the plain next-cluster predictor an operating curve compares against)."""

    name = "most-frequent"

    def __init__(self, histories: pa.Table, *, novel_only: bool = True):
        self.novel_only = novel_only
        self.next_counts: dict[int, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        for h in histories["clusters"].to_pylist():
            overall.update(h)
            for a, b in zip(h[:-1], h[1:], strict=False):
                self.next_counts[a][b] += 1
        self.global_order = [c for c, _ in sorted(overall.items(), key=lambda t: (-t[1], t[0]))]

    def choose(self, member_id: int, history: list[int], n: int, rng: np.random.Generator) -> list[int]:
        seen = set(history) if self.novel_only else set()
        after = self.next_counts.get(history[-1], Counter()) if history else Counter()
        ranked = [c for c, _ in sorted(after.items(), key=lambda t: (-t[1], t[0]))] + self.global_order
        out: list[int] = []
        for c in ranked:
            if c not in seen and c not in out:
                out.append(c)
                if len(out) == n:
                    break
        return out


class OracleNovelCluster:
    """The novel clusters the member truly likes best (reads the simulator): an evaluation upper bound.

    By default a cluster's worth is the member's mean P(like) over its items; with `catalog`, it is the
    P(like) of the item `build_impressions` would show from it (the most rated one the member has not
    rated): the ceiling of any policy whose clusters are shown that way."""

    name = "oracle"

    def __init__(self, simulator, catalog: Catalog | None = None):
        self.simulator = simulator
        self.shown = None
        if catalog is not None:
            by_cluster = _cluster_items(catalog)
            rated: dict[int, set] = defaultdict(set)
            for m, i in zip(
                *(catalog.interactions[c].to_pylist() for c in ("member_id", "item_id")), strict=True
            ):
                rated[m].add(i)
            self.shown = (by_cluster, rated)

    def _worth(self, member_id: int) -> np.ndarray:
        if self.shown is None:
            return self.simulator.cluster_affinity([member_id])[0]
        by_cluster, rated = self.shown
        worth = np.full(self.simulator.n_clusters, -np.inf)
        first = {c: next((int(i) for i in items if int(i) not in rated[member_id]), None)
                 for c, items in by_cluster.items()}  # fmt: skip
        clusters = [c for c, i in first.items() if i is not None]
        if clusters:
            p = self.simulator.like_probability([member_id] * len(clusters), [first[c] for c in clusters])
            worth[clusters] = p
        return worth

    def choose(self, member_id: int, history: list[int], n: int, rng: np.random.Generator) -> list[int]:
        aff = self._worth(member_id)
        aff[history] = -np.inf
        return [int(c) for c in np.argsort(-aff, kind="stable")[:n] if np.isfinite(aff[c])]


class RankedListPolicy:
    """Whatever a given ranked list says: member_id -> clusters in rank order (e.g. a cache's best-of-n).
    In-history clusters are skipped, so the explore slots stay novel (`novel_only=False`: shown as they
    are, to measure how novel a proposer is)."""

    name = "ranked-list"

    def __init__(self, lists: dict[int, list[int]], *, novel_only: bool = True):
        self.lists = lists
        self.novel_only = novel_only

    def choose(self, member_id: int, history: list[int], n: int, rng: np.random.Generator) -> list[int]:
        seen = set(history) if self.novel_only else set()
        return [c for c in self.lists.get(member_id, []) if c not in seen][:n]


def _cluster_items(catalog: Catalog) -> dict[int, np.ndarray]:
    """Items of each cluster, most rated (in the seen data) first."""
    items = catalog.items
    ids, cid, pop = (items[c].to_numpy() for c in ("item_id", "cluster_id", "n_ratings"))
    order = np.lexsort((ids, -pop))
    out: dict[int, list] = defaultdict(list)
    for i in order:
        out[int(cid[i])].append(int(ids[i]))
    return {c: np.array(v) for c, v in out.items()}


def build_impressions(
    catalog: Catalog,
    policy,
    *,
    member_ids=None,
    slate_size: int = 10,
    explore_slots: int = 2,
    content_type: str = "movie",
    timestamp_ms: int = 0,
    seed: int = 0,
) -> pa.Table:
    """One request per member: a slate of `slate_size` items, `explore_slots` of them from the policy's
    novel clusters (spread down the page), the rest from the member's most recent clusters. Items are the
    most popular of each cluster that the member has not rated (in the seen data)."""
    if not 0 <= explore_slots <= slate_size:
        raise ValueError(f"explore_slots={explore_slots}: must be in [0, slate_size={slate_size}].")
    rng = np.random.default_rng(seed)
    k = catalog.history_k
    by_cluster = _cluster_items(catalog)
    cluster_of = dict(zip(*(catalog.items[c].to_pylist() for c in ("item_id", "cluster_id")), strict=True))
    rated: dict[int, set] = defaultdict(set)
    for m, i in zip(
        catalog.interactions["member_id"].to_pylist(),
        catalog.interactions["item_id"].to_pylist(),
        strict=True,
    ):
        rated[m].add(i)
    histories = dict(
        zip(
            catalog.histories["member_id"].to_pylist(), catalog.histories["clusters"].to_pylist(), strict=True
        )
    )
    wanted = histories.keys() if member_ids is None else member_ids
    explore_pos = (
        set(np.linspace(1, slate_size - 1, explore_slots).round().astype(int).tolist())
        if explore_slots
        else set()
    )
    rows = defaultdict(list)
    for m in wanted:
        h = histories.get(int(m))
        if not h or len(h) < k:
            continue
        key = h[-k:]
        recent = list(dict.fromkeys(reversed(h)))  # distinct, most recent first
        novel = policy.choose(int(m), h, len(explore_pos), rng)
        request = uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(m)).hex
        used: set[int] = set()

        def pick(cluster: int, exclude: set = rated[m], used: set = used) -> int | None:
            for item in by_cluster.get(cluster, ()):
                if item not in exclude and item not in used:
                    used.add(int(item))
                    return int(item)
            return None

        novel_iter, recent_iter = iter(novel), iter(recent * slate_size)
        for pos in range(slate_size):
            source = "explore" if pos in explore_pos else "exploit"
            src_iter = novel_iter if source == "explore" else recent_iter
            item = None
            for cluster in src_iter:
                item = pick(cluster)
                if item is not None:
                    break
            if item is None:
                continue
            rows["request_id"].append(request)
            rows["member_id"].append(int(m))
            rows["timestamp"].append(timestamp_ms)
            rows["history_key"].append(key)
            rows["item_id"].append(item)
            rows["cluster_id"].append(cluster_of[item])
            rows["source"].append(source)
            rows["position"].append(pos)
            rows["content_type"].append(content_type)
    return pa.table(
        {
            "request_id": pa.array(rows["request_id"], pa.string()),
            "member_id": pa.array(rows["member_id"], pa.int64()),
            "timestamp": pa.array(rows["timestamp"], pa.int64()),
            "history_key": pa.array(rows["history_key"], pa.list_(pa.int32())),
            "item_id": pa.array(rows["item_id"], pa.int64()),
            "cluster_id": pa.array(rows["cluster_id"], pa.int32()),
            "source": pa.array(rows["source"], pa.string()),
            "position": pa.array(rows["position"], pa.int32()),
            "content_type": pa.array(rows["content_type"], pa.string()),
        }
    )
