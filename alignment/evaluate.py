"""Held-out evaluation of the alignment model against two baselines.

On the held-out pairs: the AUC of a score against the label binarised at the training labels' median,
and the logloss against the soft label, for

    model                      the model's P(engage) (a pairwise model's scores Platt-scaled on training
                               pairs first: Bradley-Terry fixes differences of scores, not their level)
    global_positive_rate       the candidate's impression-weighted mean label over the training pairs
    novelty_sample_frequency   the share of the key's novelty samples that named the candidate, Platt-scaled
                               on the training pairs (only with NOVELTY_CANDIDATES of the same keys)
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from alignment.pairs import PairSet
from catalog.metrics import auc, logloss

__all__ = [
    "global_rate", "heldout_evaluation", "logloss", "pair_metrics", "platt", "sample_share", "sigmoid",
]  # fmt: skip


def global_rate(train: PairSet, n_clusters: int) -> np.ndarray:
    """(M,) each candidate's impression-weighted mean label over the training pairs (overall mean if unseen)."""
    w = np.bincount(train.candidates, train.impressions, n_clusters)
    s = np.bincount(train.candidates, train.impressions * train.labels, n_clusters)
    overall = float((train.impressions * train.labels).sum() / max(train.impressions.sum(), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w > 0, s / w, overall)


def sample_share(candidates: pa.Table | None, keys, cands) -> np.ndarray | None:
    """Share of each key's novelty samples that named the candidate (0 when it was never sampled)."""
    if candidates is None:
        return None
    share: dict[tuple, float] = {}
    for k, cs, ns, n in zip(
        *(candidates[c].to_pylist() for c in ("history_key", "candidates", "counts", "n_samples")),
        strict=True,
    ):
        for c, cnt in zip(cs, ns, strict=True):
            share[(tuple(k), c)] = cnt / max(n, 1)
    return np.array([share.get((k, int(c)), 0.0) for k, c in zip(keys, cands, strict=True)])


def platt(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """(a, b) of sigmoid(a x + b) fitted to soft labels y by Newton's method (a small ridge keeps it finite)."""
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([((p - y) * x).sum() + 1e-3 * a, (p - y).sum()])
        w = p * (1 - p)
        h = np.array([[(w * x * x).sum() + 1e-3, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-9]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def sigmoid(x: np.ndarray, a: float = 1.0, b: float = 0.0) -> np.ndarray:
    return 1 / (1 + np.exp(-(a * np.asarray(x, np.float64) + b)))


def pair_metrics(labels: np.ndarray, probs: np.ndarray, median: float) -> dict:
    """AUC against label > median of the training labels, and logloss against the soft label."""
    a = auc(labels > median, probs)
    return {"auc": None if math.isnan(a) else round(a, 4), "logloss": round(logloss(labels, probs), 4)}


def heldout_evaluation(
    train: PairSet, evals: PairSet, probs: np.ndarray, n_clusters: int, candidates: pa.Table | None
) -> dict:
    """The report's "evaluation": the model's held-out `probs` and the baselines, each {auc, logloss}."""
    median = float(np.median(train.labels))
    evaluation = {
        "heldout_pairs": len(evals),
        "label_median": median,
        "positive_share": round(float((evals.labels > median).mean()), 4),
        "model": pair_metrics(evals.labels, probs, median),
        "global_positive_rate": pair_metrics(
            evals.labels, global_rate(train, n_clusters)[evals.candidates], median
        ),
    }
    share_train = sample_share(candidates, train.keys, train.candidates)
    if share_train is not None:
        a, b = platt(share_train, train.labels)
        share_eval = sample_share(candidates, evals.keys, evals.candidates)
        evaluation["novelty_sample_frequency"] = pair_metrics(evals.labels, sigmoid(share_eval, a, b), median)
    return evaluation
