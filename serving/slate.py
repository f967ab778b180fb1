"""Slate assembly: which scored candidates are shown, in which order.

The rule (documented in README):
1. Explore pool: the best-scored item of each chosen novel cluster (at most one per cluster), best
   first; the first `explore_slots` of them are shown.
2. Exploit pool: every exploit candidate, best first.
3. Positions 0..k-1 are filled in order: an explore position (`explore_positions`, or by default
   `explore_slots` slots spread evenly over 1..k-1, as the simulator's slates) takes the next explore
   item; every other position takes the next exploit item. A pool that runs dry leaves its positions
   to the other pool, so the slate has k items whenever the candidates allow.
Ties in score go to the smaller item id, so the same scores always give the same slate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.candidates import Candidates


def explore_positions(k: int, explore_slots: int, configured: Sequence[int] | None = None) -> list[int]:
    """The slots explore items go to: the configured ones below k (the first `explore_slots`), or
    `explore_slots` slots spread evenly over 1..k-1 (distinct: their spacing is at least 1), or every slot
    when explore_slots >= k."""
    if explore_slots <= 0:
        return []
    if configured is not None:
        return sorted(p for p in configured if p < k)[:explore_slots]
    if explore_slots >= k:
        return list(range(k))
    return np.linspace(1, k - 1, explore_slots).round().astype(int).tolist()


def assemble(
    cands: Candidates, scores: np.ndarray, item_ids: np.ndarray, *, k: int, positions: Sequence[int]
) -> list[int]:
    """Candidate indices in slate order (at most k)."""
    order = np.lexsort((item_ids, -np.asarray(scores, np.float64)))  # best first, ties by item id
    explore_idx = order[cands.source[order] == "explore"]
    _, first = np.unique(cands.cluster[explore_idx], return_index=True)
    explore_pool = list(explore_idx[np.sort(first)][: len(positions)])
    exploit_pool = list(order[cands.source[order] == "exploit"])
    slots = set(positions)
    slate: list[int] = []
    for pos in range(k):
        primary, other = (explore_pool, exploit_pool) if pos in slots else (exploit_pool, explore_pool)
        pool = primary if primary else other
        if not pool:
            break
        slate.append(int(pool.pop(0)))
    return slate
