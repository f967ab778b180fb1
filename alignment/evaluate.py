"""Held-out evaluation of the alignment model against two baselines.

On the held-out pairs: the AUC of a score against the label binarised at the training labels' median,
and the logloss against the soft label, for

    model                      the model's P(engage) (a pairwise model's scores Platt-scaled on training
                               pairs first: Bradley-Terry fixes differences of scores, not their level)
    global_positive_rate       the candidate's impression-weighted mean label over the training pairs
    key_offset                 that rate with one logit offset per history key added,
                                   P = sigmoid(logit(r_c) + a_h),
                               a_h fitted on the key's training pairs (ridge-penalised logistic regression,
                               the rate held fixed): one number per cluster plus one per key. Held-out
                               pairs are unseen (key, candidate) pairs of mostly seen keys, so the key's
                               overall appetite is known; an unseen key gets a_h = 0
    history_cluster_rate       the mean over the key's clusters h of the candidate's rate among training
                               pairs whose key holds h, each smoothed towards r_c (a per-(history cluster,
                               candidate) table)
    novelty_sample_frequency   the share of the key's novelty samples that named the candidate, Platt-scaled
                               on the training pairs (only with NOVELTY_CANDIDATES of the same keys)

Each entry also has key_auc, the AUC within each history key averaged over keys (weighted by their
held-out pairs, keys with one class skipped): best-of-n ranks a key's candidates against each other, so
a key-level offset moves the AUC but not key_auc.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from alignment.pairs import PairSet
from catalog.metrics import auc, logloss

__all__ = [
    "global_rate", "heldout_evaluation", "history_cluster_rate", "key_auc", "key_offsets", "logloss", "logit",
    "pair_metrics", "platt", "sample_share", "sigmoid", "smoothed_rate", "training_global_rate",
]  # fmt: skip

KEY_OFFSET_RIDGE = 1.0  # the key_offset baseline's L2 weight on a_h (a pseudo-pair's worth of evidence)
HISTORY_CLUSTER_STRENGTH = 200.0  # impressions of r_c a (history cluster, candidate) cell is shrunk with


def global_rate(train: PairSet, n_clusters: int) -> np.ndarray:
    """(M,) each candidate's impression-weighted mean label over the training pairs (overall mean if unseen)."""
    w = np.bincount(train.candidates, train.impressions, n_clusters)
    s = np.bincount(train.candidates, train.impressions * train.labels, n_clusters)
    overall = float((train.impressions * train.labels).sum() / max(train.impressions.sum(), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w > 0, s / w, overall)


def training_global_rate(pairs: pa.Table, n_clusters: int, *, eval_fraction: float, seed: int) -> np.ndarray:
    """(M,) the global_positive_rate baseline's table for FEEDBACK_PAIRS split as a model with this
    eval_fraction and seed splits them: global_rate over the training (not held-out) pairs. The report's
    global-rate scorer."""
    from alignment.pairs import heldout_mask

    data = PairSet.from_table(pairs)
    held = heldout_mask(data.keys, data.candidates, eval_fraction, seed)
    return global_rate(data.take(np.flatnonzero(~held)), n_clusters)


def smoothed_rate(train: PairSet, n_clusters: int, strength: float) -> np.ndarray:
    """(M,) each candidate's impression-weighted mean label over the training pairs, shrunk towards the
    overall mean by `strength` pseudo-impressions: (sum w y + strength m) / (sum w + strength)."""
    w = np.bincount(train.candidates, train.impressions, n_clusters)
    s = np.bincount(train.candidates, train.impressions * train.labels, n_clusters)
    overall = float((train.impressions * train.labels).sum() / max(train.impressions.sum(), 1))
    if strength <= 0:
        return global_rate(train, n_clusters)
    return (s + strength * overall) / (w + strength)


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def key_offsets(
    keys: list[tuple[int, ...]], offset: np.ndarray, labels: np.ndarray, ridge: float = KEY_OFFSET_RIDGE
) -> dict[tuple[int, ...], float]:
    """a_h per key: argmin over a of sum_i BCE(sigmoid(offset_i + a), y_i) + ridge a^2 / 2 over the key's
    pairs, by Newton's method (all keys at once)."""
    distinct = list(dict.fromkeys(keys))
    slot = {k: j for j, k in enumerate(distinct)}
    idx = np.fromiter((slot[k] for k in keys), np.int64, len(keys))
    a = np.zeros(len(distinct))
    for _ in range(30):
        p = sigmoid(offset + a[idx])
        grad = np.bincount(idx, p - labels, len(distinct)) + ridge * a
        hess = np.bincount(idx, p * (1 - p), len(distinct)) + ridge
        step = grad / hess
        a -= step
        if np.abs(step).max() < 1e-8:
            break
    return dict(zip(distinct, a.tolist(), strict=True))


def history_cluster_rate(
    train: PairSet, evals: PairSet, n_clusters: int, strength: float = HISTORY_CLUSTER_STRENGTH
) -> np.ndarray:
    """(len(evals),) the mean over the eval key's distinct clusters h of the candidate's rate among the
    training pairs whose key holds h, each cell shrunk towards the candidate's global rate."""
    g = global_rate(train, n_clusters)
    s, w = np.zeros((n_clusters, n_clusters)), np.zeros((n_clusters, n_clusters))
    for k, c, y, im in zip(train.keys, train.candidates, train.labels, train.impressions, strict=True):
        for h in set(k):
            s[h, c] += im * y
            w[h, c] += im
    cell = (s + strength * g[None, :]) / (w + strength)  # (M history clusters, M candidates)
    return np.array([cell[list(set(k)), c].mean() for k, c in zip(evals.keys, evals.candidates, strict=True)])


def key_auc(keys: list[tuple[int, ...]], y: np.ndarray, p: np.ndarray) -> float:
    """The AUC within each key, averaged over keys weighted by their pairs (keys with one class skipped);
    NaN when no key has both classes."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    total = weight = 0.0
    for idx in groups.values():
        yk = y[idx]
        if yk.all() or not yk.any():
            continue
        total += len(idx) * auc(yk, p[idx])
        weight += len(idx)
    return total / weight if weight else float("nan")


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


def pair_metrics(
    labels: np.ndarray, probs: np.ndarray, median: float, keys: list[tuple[int, ...]] | None = None
) -> dict:
    """AUC against label > median of the training labels, logloss against the soft label, and with the
    pairs' keys the within-key AUC (key_auc)."""

    def rounded(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    out = {"auc": rounded(auc(labels > median, probs)), "logloss": round(logloss(labels, probs), 4)}
    if keys is not None:
        out["key_auc"] = rounded(key_auc(keys, labels > median, np.asarray(probs, np.float64)))
    return out


def heldout_evaluation(
    train: PairSet, evals: PairSet, probs: np.ndarray, n_clusters: int, candidates: pa.Table | None
) -> dict:
    """The report's "evaluation": the model's held-out `probs` and the baselines, each {auc, logloss,
    key_auc}; "best_baseline" names the baseline of the highest AUC."""
    median = float(np.median(train.labels))

    def metrics(p: np.ndarray) -> dict:
        return pair_metrics(evals.labels, p, median, evals.keys)

    g = global_rate(train, n_clusters)
    a_h = key_offsets(train.keys, logit(g[train.candidates]), train.labels)
    with_offset = logit(g[evals.candidates]) + np.array([a_h.get(k, 0.0) for k in evals.keys])
    evaluation = {
        "heldout_pairs": len(evals),
        "label_median": median,
        "positive_share": round(float((evals.labels > median).mean()), 4),
        "model": metrics(probs),
        "global_positive_rate": metrics(g[evals.candidates]),
        "key_offset": metrics(sigmoid(with_offset)),
        "history_cluster_rate": metrics(history_cluster_rate(train, evals, n_clusters)),
    }
    share_train = sample_share(candidates, train.keys, train.candidates)
    if share_train is not None:
        a, b = platt(share_train, train.labels)
        share_eval = sample_share(candidates, evals.keys, evals.candidates)
        evaluation["novelty_sample_frequency"] = metrics(sigmoid(share_eval, a, b))
    baselines = [n for n in BASELINES if evaluation.get(n, {}).get("auc") is not None]
    evaluation["best_baseline"] = max(baselines, key=lambda n: evaluation[n]["auc"]) if baselines else None
    return evaluation


BASELINES = ("global_positive_rate", "key_offset", "history_cluster_rate", "novelty_sample_frequency")
