"""Fine-tuning examples for the novelty LLM, from real member histories.

At every step t >= K of a member's history h (clusters of positively engaged items, repeats merged),
the history key is (h[t-K], ..., h[t-1]) and the target is the first later cluster h[j], j >= t, that
is not in the key: the next cluster the member engaged with that was new with respect to the key
(the papers' novelty transition). Frequent keys would dominate the data, so each key keeps at most
`max_per_key` examples, drawn uniformly (this keeps the key's own target mix). Members are split, not
examples: held-out members give the evaluation examples.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class ExampleConfig:
    k: int = 2  # history key length K
    max_per_key: int = 48  # cap per history key so frequent keys do not dominate; 0 = no cap
    eval_fraction: float = 0.1  # share of members held out for evaluation
    seed: int = 0

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"ExampleConfig.k={self.k}: must be >= 1.")
        if self.max_per_key < 0:
            raise ValueError(f"ExampleConfig.max_per_key={self.max_per_key}: must be >= 0 (0 = no cap).")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"ExampleConfig.eval_fraction={self.eval_fraction}: must be in (0, 1).")


@dataclass
class NoveltyExamples:
    """Examples as parallel lists: history keys (tuples of K ids), targets, and whose history they came from."""

    keys: list[tuple[int, ...]] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def add(self, key: tuple[int, ...], target: int, member: int) -> None:
        self.keys.append(key)
        self.targets.append(target)
        self.members.append(member)

    def subset(self, index) -> NoveltyExamples:
        return NoveltyExamples(
            [self.keys[i] for i in index], [self.targets[i] for i in index], [self.members[i] for i in index]
        )


def novelty_transitions(history: list[int], k: int) -> list[tuple[tuple[int, ...], int]]:
    """(history key, next novel cluster) at every step of one history; empty when it is too short."""
    out = []
    for t in range(k, len(history)):
        key = tuple(history[t - k : t])
        for c in history[t:]:
            if c not in key:
                out.append((key, c))
                break
    return out


def _held_out(rng, members, fraction: float) -> set[int]:
    return set(members[rng.random(len(members)) < fraction].tolist())


def held_out_members(histories: pa.Table, config: ExampleConfig) -> set[int]:
    """The members build_examples holds out for evaluation (same seed, same draw)."""
    return _held_out(
        np.random.default_rng(config.seed), histories["member_id"].to_numpy(), config.eval_fraction
    )


def build_examples(
    histories: pa.Table, config: ExampleConfig, n_clusters: int
) -> tuple[NoveltyExamples, NoveltyExamples, dict]:
    """(train, eval, stats) from a HISTORIES table. Too-short histories and unknown ids are counted, not fatal."""
    rng = np.random.default_rng(config.seed)
    members = histories["member_id"].to_numpy()
    held_out = _held_out(rng, members, config.eval_fraction)
    stats = {"members": len(members), "too_short": 0, "unknown_cluster": 0, "eval_members": len(held_out)}

    by_key: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
    evals = NoveltyExamples()
    for member, history in zip(members.tolist(), histories["clusters"].to_pylist(), strict=True):
        if any(not 0 <= c < n_clusters for c in history):
            stats["unknown_cluster"] += 1
            continue
        pairs = novelty_transitions(history, config.k)
        if not pairs:
            stats["too_short"] += 1
            continue
        for key, target in pairs:
            if member in held_out:
                evals.add(key, target, member)
            else:
                by_key[key].append((target, member))

    train = NoveltyExamples()
    transitions = 0
    for key in sorted(by_key):
        rows = by_key[key]
        transitions += len(rows)
        if config.max_per_key and len(rows) > config.max_per_key:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), config.max_per_key, replace=False))]
        for target, member in rows:
            train.add(key, target, member)
    order = rng.permutation(len(train))
    train = train.subset(order)
    stats.update(
        train_transitions=transitions,
        train_examples=len(train),
        train_keys=len(by_key),
        eval_examples=len(evals),
    )
    return train, evals, stats
