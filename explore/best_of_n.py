"""Best-of-n selection: the clusters a history key's cache entry holds, and the back-off entries.

For one key, the novelty LLM's distinct candidates come with their sample counts and the alignment
model's scores. The entry keeps the `top_k` best by score, dropping those below `min_score`; ties are
broken by sample count (more samples first), then by cluster id, so the same inputs always give the
same entry.

Back-off entries serve keys the bulk run never saw: for each suffix of the key (its most recent K-1,
..., 1 clusters) and for the global entry "*", a candidate's score is its mean score over the keys
that share the suffix (or over all keys), clusters of the suffix itself excluded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from explore.cache import GLOBAL_FIELD, key_field


@dataclass(frozen=True)
class SelectionConfig:
    top_k: int = 4  # clusters cached per key (the explore slots to fill)
    min_score: float = 0.0  # candidates scoring below this are never cached

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"SelectionConfig.top_k={self.top_k}: must be >= 1.")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"SelectionConfig.min_score={self.min_score}: a probability in [0, 1].")


def best_of_n(
    candidates: Sequence[int], counts: Sequence[int], scores: Sequence[float], config: SelectionConfig
) -> tuple[list[int], list[float]]:
    """(clusters, scores) of the entry: best score first, ties by sample count then cluster id."""
    ranked = sorted(
        (i for i in range(len(candidates)) if scores[i] >= config.min_score),
        key=lambda i: (-scores[i], -counts[i], candidates[i]),
    )[: config.top_k]
    return [int(candidates[i]) for i in ranked], [float(scores[i]) for i in ranked]


def select_batch(batch: pa.Table, top_k: int = 4, min_score: float = 0.0) -> pa.Table:
    """Ray Data stage: rows with candidates, counts and scores gain `selected` and `selected_scores`."""
    config = SelectionConfig(top_k, min_score)
    chosen = [
        best_of_n(c, n, s, config)
        for c, n, s in zip(
            *(batch[col].to_pylist() for col in ("candidates", "counts", "scores")), strict=True
        )
    ]
    batch = batch.append_column("selected", pa.array([c for c, _ in chosen], pa.list_(pa.int32())))
    return batch.append_column("selected_scores", pa.array([s for _, s in chosen], pa.list_(pa.float32())))


def backoff_entries(
    keys: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    scores: Sequence[Sequence[float]],
    config: SelectionConfig,
) -> dict[str, tuple[list[int], list[float]]]:
    """Field -> (clusters, scores) for every suffix of the keys (lengths K-1..1) and the global field."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    suffix_of: dict[str, tuple[int, ...]] = {GLOBAL_FIELD: ()}
    for key, cands, scs in zip(keys, candidates, scores, strict=True):
        fields = [(key_field(key[-n:]), tuple(key[-n:])) for n in range(len(key) - 1, 0, -1)]
        for field, suffix in [*fields, (GLOBAL_FIELD, ())]:
            suffix_of[field] = suffix
            acc = sums[field]
            for c, s in zip(cands, scs, strict=True):
                acc[c][0] += s
                acc[c][1] += 1
    out = {}
    for field, acc in sums.items():
        items = [(c, total / n, n) for c, (total, n) in acc.items() if c not in suffix_of[field]]
        cands = [c for c, _, _ in items]
        means = [m for _, m, _ in items]
        counts = [n for _, _, n in items]
        chosen = best_of_n(cands, counts, means, config)
        if chosen[0]:
            out[field] = chosen
    return out
