"""Member histories: chronological cluster sequences of positively engaged items.

A member's history is the sequence of clusters of the items they engaged with positively, in
time order (ties broken by item id), with consecutive repeats merged into one run:

    items  a(c1) b(c1) c(c4) d(c1)  ->  history [c1, c4, c1]

Its last K clusters are the *history key*, the unit the exploration models reason over.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from catalog.schemas import HISTORIES


def sorted_index(
    sorted_ids: np.ndarray, query: np.ndarray, *, where: str, unknown: str, fix: str
) -> np.ndarray:
    """Position of each id of `query` in `sorted_ids` (ascending). An id not there is a ValueError:
    "{where}: {count} {unknown}, e.g. [ids]. {fix}"."""
    pos = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)
    found = sorted_ids[pos] == query
    if not found.all():
        missing = np.unique(query[~found])
        raise ValueError(f"{where}: {len(missing)} {unknown}, e.g. {missing[:5].tolist()}. {fix}")
    return pos


def cluster_lookup(
    item_ids: np.ndarray, item_cluster: np.ndarray, query: np.ndarray, *, source: str = "interactions"
) -> np.ndarray:
    """Cluster of each id in `query`; a ValueError naming the unknown item ids if any is missing."""
    order = np.argsort(item_ids, kind="stable")
    pos = sorted_index(
        item_ids[order],
        query,
        where=f"{source}, column 'item_id'",
        unknown="item id(s) not in the catalog",
        fix="Rebuild the catalog from the same data, or drop them.",
    )
    return item_cluster[order][pos]


def build_histories(
    interactions: pa.Table, item_ids: np.ndarray, item_cluster: np.ndarray, *, min_rating: float = 4.0
) -> pa.Table:
    """HISTORIES table, one row per member with at least one positive interaction (rating >= min_rating)."""
    rating = interactions["rating"].to_numpy()
    keep = rating >= min_rating
    member = interactions["member_id"].to_numpy()[keep]
    item = interactions["item_id"].to_numpy()[keep]
    ts = interactions["timestamp"].to_numpy()[keep]
    if len(member) == 0:
        return HISTORIES.empty_table()
    cluster = cluster_lookup(np.asarray(item_ids), np.asarray(item_cluster), item)

    order = np.lexsort((item, ts, member))  # member, then time, then item id
    member, cluster, ts = member[order], cluster[order], ts[order]
    new_member = np.empty(len(member), dtype=bool)
    new_member[0] = True
    new_member[1:] = member[1:] != member[:-1]
    run_start = new_member.copy()
    run_start[1:] |= cluster[1:] != cluster[:-1]

    run_member = member[run_start]
    member_start = np.flatnonzero(np.r_[True, run_member[1:] != run_member[:-1]])
    offsets = np.r_[member_start, len(run_member)].astype(np.int32)
    n_pos = np.diff(np.r_[np.flatnonzero(new_member), len(member)]).astype(np.int32)
    return pa.table(
        {
            "member_id": pa.array(run_member[member_start]),
            "clusters": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(cluster[run_start].astype(np.int32))
            ),
            "timestamps": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(ts[run_start].astype(np.int64))
            ),
            "n_positive": pa.array(n_pos),
        },
        schema=HISTORIES,
    )


def history_key(history: list[int], k: int) -> tuple[int, ...] | None:
    """The last k clusters of a history, oldest first; None when the history is shorter than k."""
    if k < 1:
        raise ValueError(f"history key length k={k}: must be >= 1.")
    return tuple(history[-k:]) if len(history) >= k else None


def history_keys(histories: pa.Table, k: int) -> pa.Table:
    """member_id and history_key (list<int32> of length k) for every member whose history has >= k runs."""
    rows = [
        (m, key)
        for m, h in zip(histories["member_id"].to_pylist(), histories["clusters"].to_pylist(), strict=True)
        if (key := history_key(h, k)) is not None
    ]
    return pa.table(
        {
            "member_id": pa.array([m for m, _ in rows], pa.int64()),
            "history_key": pa.array([list(key) for _, key in rows], pa.list_(pa.int32())),
        }
    )


def key_coverage(histories: pa.Table, k: int, n_clusters: int) -> dict:
    """How much of the M^K space of history keys members actually occupy."""
    keys = Counter(tuple(key) for key in history_keys(histories, k)["history_key"].to_pylist())
    n_members = histories.num_rows
    with_key = sum(keys.values())
    return {
        "k": k,
        "members": n_members,
        "members_with_key": with_key,
        "members_with_key_share": with_key / n_members if n_members else 0.0,
        "distinct_keys": len(keys),
        "possible_keys": n_clusters**k,
        "key_space_share": len(keys) / n_clusters**k,
        "top_keys": [(list(key), n) for key, n in keys.most_common(5)],
    }


def split_by_time(interactions: pa.Table, holdout_fraction: float) -> tuple[pa.Table, pa.Table]:
    """(seen, held_out): each member's last `holdout_fraction` of ratings in time order (ties by item id)
    are held out; a member with n ratings keeps floor(n * (1 - fraction)) of them, at least one."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={holdout_fraction}: must be in [0, 1).")
    member = interactions["member_id"].to_numpy()
    order = np.lexsort((interactions["item_id"].to_numpy(), interactions["timestamp"].to_numpy(), member))
    m_sorted = member[order]
    starts = np.flatnonzero(np.r_[True, m_sorted[1:] != m_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(m_sorted)])
    rank = np.arange(len(m_sorted)) - np.repeat(starts, counts)
    keep_n = np.maximum(1, np.floor(counts * (1 - holdout_fraction)).astype(np.int64))
    held = np.zeros(len(member), dtype=bool)
    held[order] = rank >= np.repeat(keep_n, counts)
    return interactions.filter(pa.array(~held)), interactions.filter(pa.array(held))
