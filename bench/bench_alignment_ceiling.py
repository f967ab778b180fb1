"""What the alignment model's data can teach (issue 16, part 2): held-out AUC, logloss and within-key AUC
of scorers that know more and more of the simulator's truth, on the demo's exploration traffic (24 rounds
of 8 uniformly random novel clusters per slate) and on four times that traffic, with the alignment
model's own aggregation and held-out split.

Best-of-n ranks one key's candidates, so within-key AUC (`key_auc`) is the number that decides whether a
scorer can select better than the global-rate table. The scorers, from the baseline up:
- global positive rate: one number per cluster (the issue's baseline).
- key offset: that plus one logit offset per key (`alignment.evaluate.key_offsets`); moves AUC, not key_auc.
- learned taste factorisation: key offset + u_h . v_c (rank 8), both sides learned from the training
  labels alone, its L2 chosen on a validation part. No simulator knowledge: what a model that learns
  per-key tastes from these labels can reach; the alignment LLM learns from the same labels.
- pooled taste (simulator's factors): the mean member factor over members whose key holds each of the
  key's clusters, dotted with the shown items' true factors, on top of the key offset. What generalising
  from the key's clusters could give at best.
- per-key taste, true item factors: each key's taste vector fitted on its own training labels, the items'
  true factors given. What learning per-key tastes could give with the item side known exactly.
- oracle: the true P(like) of the items shown for the pair, averaged over its impressions: the ceiling
  set by the labels' noise (not a calibrated probability: its logloss is not comparable).

The row's ratio is the learned factorisation's key_auc over the global rate's, in the same run."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alignment import aggregate_logs
from alignment.evaluate import global_rate, key_offsets, logit, pair_metrics, sigmoid
from alignment.pairs import VALID_SALT, PairSet, heldout_mask, split_pairs
from catalog.build import build_movielens_catalog
from catalog.feedback import log_files
from jobs.simulate import simulate_round
from sim import MemberSimulator, SimConfig

RANK = 8  # the learned factorisation's rank (the simulator's factors have 16)
L2_GRID = (0.3, 1.0, 3.0, 10.0)  # the learned factorisation's L2 strengths, one chosen on validation
TASTE_RIDGE = 5.0  # ridge of the per-key taste fit with true item factors


def _pair_codes(keys: list[tuple[int, ...]], candidates: np.ndarray, m: int) -> np.ndarray:
    code = np.zeros(len(keys), np.int64)
    for j in range(len(keys[0]) if keys else 0):
        code = code * m + np.fromiter((k[j] for k in keys), np.int64, len(keys))
    return code * m + candidates


def _logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Weights of sigmoid(offset + x w) against soft labels y, by Newton's method."""
    w = np.zeros(x.shape[1])
    for _ in range(30):
        p = sigmoid(offset + x @ w)
        h = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        w -= np.linalg.solve(h, x.T @ (p - y) + ridge * w)
    return w


def _factorisation(fit: PairSet, offset_fit, score: PairSet, offset_score, m: int, l2: float, seed: int):
    """Key offset + u_h . v_c learned on `fit` (BCE on the soft labels, full-batch Adam); probabilities of
    `score`'s pairs (a key unseen in `fit` gets u = 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    keys = {k: j for j, k in enumerate(dict.fromkeys(fit.keys))}
    kf = torch.tensor([keys[k] for k in fit.keys])
    U = torch.nn.Parameter(0.01 * torch.randn(len(keys) + 1, RANK, generator=g))  # last row: unseen key
    V = torch.nn.Parameter(0.01 * torch.randn(m, RANK, generator=g))
    cf, y = torch.tensor(fit.candidates), torch.tensor(fit.labels, dtype=torch.float32)
    off = torch.tensor(offset_fit, dtype=torch.float32)
    opt = torch.optim.Adam([U, V], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        z = off + (U[kf] * V[cf]).sum(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        (loss + l2 * (U[:-1].pow(2).sum() + V.pow(2).sum()) / len(y)).backward()
        opt.step()
    ks = torch.tensor([keys.get(k, len(keys)) for k in score.keys])
    with torch.no_grad():
        U[-1].zero_()
        z = torch.tensor(offset_score, dtype=torch.float32) + (U[ks] * V[torch.tensor(score.candidates)]).sum(
            1
        )
    return torch.sigmoid(z).numpy().astype(np.float64)


def ceiling(rounds: int, seed: int = 0) -> dict:
    """Every scorer's held-out metrics after `rounds` rounds of uniform exploration traffic."""
    t0 = time.perf_counter()
    catalog = build_movielens_catalog()
    sim = MemberSimulator.for_catalog(catalog, SimConfig(seed=seed))
    m, k = catalog.n_clusters, catalog.history_k
    with tempfile.TemporaryDirectory() as logs:
        for r in range(rounds):  # the demo's exploration traffic (jobs.demo, stage explore-traffic)
            simulate_round(catalog, sim, "random", logs, explore_slots=8, seed=seed + 1000 + r)
        agg = aggregate_logs([logs], k, m)
        log = pa.concat_tables([pq.read_table(f) for f in log_files([logs])])
    log = log.filter(pc.equal(log["source"], "explore"))
    split = split_pairs(agg.pairs, agg.preferences, eval_fraction=0.2, seed=seed, objective="pointwise")
    train, evals = split.train, split.evals
    median = float(np.median(train.labels))

    # per pair: the mean true P(like) and the mean true item factor of the items its impressions showed
    aff = sim.affinity
    members, items = log["member_id"].to_numpy(), log["item_id"].to_numpy()
    u, i = aff.member_index(members), aff.item_index(items)
    log_codes = _pair_codes(
        [tuple(h) for h in log["history_key"].to_pylist()], log["cluster_id"].to_numpy(), m
    )
    codes, inv = np.unique(log_codes, return_inverse=True)
    shown = np.bincount(inv)
    p_true = np.bincount(inv, 1 / (1 + np.exp(-aff.like_logit(u, i)))) / shown
    q_true = np.stack([np.bincount(inv, aff.Q[i, f]) for f in range(aff.Q.shape[1])], 1) / shown[:, None]

    def rows(ps: PairSet) -> np.ndarray:
        return np.searchsorted(codes, _pair_codes(ps.keys, ps.candidates, m))

    g = global_rate(train, m)
    a_h = key_offsets(train.keys, logit(g[train.candidates]), train.labels)

    def offset(ps: PairSet) -> np.ndarray:
        return logit(g[ps.candidates]) + np.array([a_h.get(key, 0.0) for key in ps.keys])

    scores = {
        "global_positive_rate": g[evals.candidates],
        "key_offset": sigmoid(offset(evals)),
    }
    # learned factorisation: L2 chosen by validation logloss inside the training pairs, then refit on all
    in_valid = heldout_mask(train.keys, train.candidates, 0.1, seed, salt=VALID_SALT)
    fit, valid = train.take(np.flatnonzero(~in_valid)), train.take(np.flatnonzero(in_valid))
    losses = {}
    for l2 in L2_GRID:
        p = np.clip(_factorisation(fit, offset(fit), valid, offset(valid), m, l2, seed), 1e-6, 1 - 1e-6)
        losses[l2] = float(-np.mean(valid.labels * np.log(p) + (1 - valid.labels) * np.log(1 - p)))
    l2 = min(losses, key=losses.get)
    scores["learned_taste_factorisation"] = _factorisation(
        train, offset(train), evals, offset(evals), m, l2, seed
    )

    # pooled taste: mean member factor over the members whose history key holds each cluster
    pooled, count = np.zeros((m, aff.P.shape[1])), np.zeros(m)
    known = set(aff.member_ids.tolist())
    for member, clusters in zip(
        *(catalog.histories[c].to_pylist() for c in ("member_id", "clusters")), strict=True
    ):
        if len(clusters) >= k and member in known:
            for c in set(clusters[-k:]):
                pooled[c] += aff.P[aff.member_index(np.array([member]))[0]]
                count[c] += 1
    pooled /= np.maximum(count, 1)[:, None]

    def pooled_taste(ps: PairSet) -> np.ndarray:
        q = q_true[rows(ps)]
        return np.array([pooled[list(set(key))].mean(0) @ q[j] for j, key in enumerate(ps.keys)])[:, None]

    w = _logistic(pooled_taste(train), train.labels, offset(train))
    scores["pooled_taste_sim_factors"] = sigmoid(offset(evals) + pooled_taste(evals) @ w)

    # per-key taste with the true item factors: ridge logistic per key on its own training pairs
    q_train, q_eval, off_train = q_true[rows(train)], q_true[rows(evals)], offset(train)
    by_key: dict[tuple[int, ...], list[int]] = {}
    for j, key in enumerate(train.keys):
        by_key.setdefault(key, []).append(j)
    taste = {
        key: _logistic(q_train[idx], train.labels[idx], off_train[idx], TASTE_RIDGE)
        for key, idx in by_key.items()
    }
    zero = np.zeros(q_true.shape[1])
    scores["per_key_taste_true_items"] = sigmoid(
        offset(evals) + np.einsum("nf,nf->n", q_eval, np.stack([taste.get(key, zero) for key in evals.keys]))
    )
    scores["oracle_true_like_probability"] = p_true[rows(evals)]

    return {
        "rounds": rounds,
        "explore_impressions": log.num_rows,
        "pairs": agg.pairs.num_rows,
        "heldout_pairs": len(evals),
        "keys": len({tuple(x) for x in agg.pairs["history_key"].to_pylist()}),
        "impressions_per_pair": float(evals.impressions.mean()),
        "factorisation_l2": l2,
        "scorers": {name: pair_metrics(evals.labels, p, median, evals.keys) for name, p in scores.items()},
        "seconds": time.perf_counter() - t0,
    }


def run(quick: bool = False) -> list[dict]:
    rows = []
    for rounds in (24,) if quick else (24, 96):
        c = ceiling(rounds)
        s = c["scorers"]
        print(
            f"  {rounds} rounds: {c['explore_impressions']:,} explore impressions, {c['pairs']:,} pairs of "
            f"{c['keys']} keys, {c['impressions_per_pair']:.1f} impressions per held-out pair "
            f"({c['heldout_pairs']:,}); factorisation L2 {c['factorisation_l2']} (validation); AUC / logloss / "
            "within-key AUC:"
        )
        for name, v in s.items():
            print(f"    {name:<32} {v['auc']:.4f} / {v['logloss']:.4f} / {v['key_auc']:.4f}")
        learned, base = s["learned_taste_factorisation"], s["global_positive_rate"]
        rows.append(
            {
                "name": f"alignment_ceiling_{rounds}_rounds",
                "value": learned["key_auc"],
                "unit": "within-key AUC",
                "baseline": "global positive rate",
                "baseline_value": base["key_auc"],
                "ratio": learned["key_auc"] / base["key_auc"],
                "ratio_meaning": "learned taste factorisation's within-key AUC over the global rate's",
                "detail": c,
            }
        )
    return rows
