"""The alignment model's data: aggregated feedback pairs as arrays, their held-out split by a stable hash
of (key, candidate), and the preferences (pairwise objective) among the training pairs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class PairSet:
    """Pairs as parallel arrays: history keys, candidates, labels, impressions."""

    keys: list[tuple[int, ...]]
    candidates: np.ndarray
    labels: np.ndarray
    impressions: np.ndarray

    @classmethod
    def from_table(cls, pairs: pa.Table) -> PairSet:
        return cls(
            [tuple(k) for k in pairs["history_key"].to_pylist()],
            pairs["cluster_id"].to_numpy().astype(np.int64),
            pairs["label"].to_numpy().astype(np.float64),
            pairs["impressions"].to_numpy().astype(np.float64),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray) -> PairSet:
        return PairSet(
            [self.keys[i] for i in idx], self.candidates[idx], self.labels[idx], self.impressions[idx]
        )


def heldout_mask(
    keys: list[tuple[int, ...]], candidates: np.ndarray, fraction: float, seed: int, salt: str = ""
) -> np.ndarray:
    """True for held-out pairs: a stable hash of (salt, seed, key, candidate) below `fraction`. A salt
    draws an independent split (the validation part inside the training pairs); "" is the evaluation one."""
    out = np.empty(len(keys), bool)
    for i, (k, c) in enumerate(zip(keys, candidates, strict=True)):
        h = hashlib.sha256(f"{salt}{seed}|{','.join(map(str, k))}|{c}".encode()).digest()
        out[i] = int.from_bytes(h[:8], "little") / 2**64 < fraction
    return out


def preference_arrays(
    prefs: pa.Table, train_pairs: set
) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    """(keys, preferred, other) of the preferences whose two pairs are both training pairs."""
    keys, a, b = [], [], []
    for k, p, o in zip(*(prefs[c].to_pylist() for c in ("history_key", "preferred", "other")), strict=True):
        k = tuple(k)
        if (k, p) in train_pairs and (k, o) in train_pairs:
            keys.append(k)
            a.append(p)
            b.append(o)
    return keys, np.array(a, np.int64), np.array(b, np.int64)


VALID_SALT = "valid|"  # the validation part's hash salt: independent of the evaluation split


@dataclass
class PairSplit:
    """All pairs; the training pairs (everything not held out: the baselines' and the prior's table) and
    within them the fitted ones and the validation ones (early stopping); the held-out evaluation pairs;
    the preferences among the fitted pairs as parallel arrays (keys, preferred candidate, other one)."""

    data: PairSet
    train: PairSet
    evals: PairSet
    pref_keys: list[tuple[int, ...]]
    pref_a: np.ndarray
    pref_b: np.ndarray
    fit: PairSet | None = None  # the pairs gradients come from (train less valid; train when no valid)
    valid: PairSet | None = None  # the pairs early stopping reads (None: no validation part)

    def __post_init__(self):
        if self.fit is None:
            self.fit = self.train


def split_pairs(
    pairs: pa.Table,
    preferences: pa.Table,
    *,
    eval_fraction: float,
    seed: int,
    objective: str,
    valid_fraction: float = 0.0,
) -> PairSplit:
    """FEEDBACK_PAIRS split by heldout_mask into training and held-out pairs, `valid_fraction` of the
    training pairs set aside for validation by an independent hash, FEEDBACK_PREFERENCES kept where both
    pairs are fitted; a split too small to train, validate or evaluate on is a ValueError that says what
    to change."""
    data = PairSet.from_table(pairs)
    held = heldout_mask(data.keys, data.candidates, eval_fraction, seed)
    train, evals = data.take(np.flatnonzero(~held)), data.take(np.flatnonzero(held))
    if len(train) < 2 or len(evals) < 2:
        raise ValueError(
            f"{len(data)} aggregated pairs give {len(train)} training and {len(evals)} held-out pairs; need at "
            "least 2 of each. Collect more feedback or lower --min-impressions."
        )
    fit, valid = train, None
    if valid_fraction > 0:
        in_valid = heldout_mask(train.keys, train.candidates, valid_fraction, seed, salt=VALID_SALT)
        fit, valid = train.take(np.flatnonzero(~in_valid)), train.take(np.flatnonzero(in_valid))
        if len(fit) < 2 or len(valid) < 2:
            raise ValueError(
                f"valid_fraction={valid_fraction}: {len(train)} training pairs give {len(fit)} to fit and "
                f"{len(valid)} to validate on; need at least 2 of each. Set valid_fraction=0 (no early "
                "stopping) or collect more feedback."
            )
    pref_keys, pref_a, pref_b = preference_arrays(
        preferences, set(zip(fit.keys, fit.candidates.tolist(), strict=True))
    )
    if objective == "pairwise" and not len(pref_keys):
        raise ValueError("objective='pairwise': no preference pairs among the training pairs; lower min_gap.")
    return PairSplit(data, train, evals, pref_keys, pref_a, pref_b, fit=fit, valid=valid)
