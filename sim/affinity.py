"""Members' true affinities, fitted on *all* MovieLens ratings (seen and held out).

A biased matrix factorisation fitted by alternating least squares,

    r_hat(u, i) = mu + b_u + b_i + p_u . q_i,

then a logistic calibration of r_hat to "liked" (rating >= 4) on the observed ratings,

    P(like | u, i) = sigmoid(a * r_hat(u, i) + b).

A member's affinity to a cluster is the popularity-weighted mean of P(like) over its items, so
responses to clusters a member never rated come from learned structure, not chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from catalog.histories import sorted_index


@dataclass(frozen=True)
class AffinityConfig:
    rank: int = 16  # latent factors per member and item
    reg: float = 8.0  # L2 penalty on factors and biases (ALS ridge)
    iters: int = 12  # ALS sweeps
    like_threshold: float = 4.0  # a rating at or above this counts as liked
    seed: int = 0

    def __post_init__(self):
        if self.rank < 1 or self.iters < 1 or self.reg <= 0:
            raise ValueError(
                f"AffinityConfig rank={self.rank}, iters={self.iters}, reg={self.reg}: "
                "need rank >= 1, iters >= 1, reg > 0."
            )


@dataclass(frozen=True)
class AffinityModel:
    member_ids: np.ndarray  # (U,) sorted
    item_ids: np.ndarray  # (I,) sorted
    mu: float
    member_bias: np.ndarray  # (U,)
    item_bias: np.ndarray  # (I,)
    P: np.ndarray  # (U, f)
    Q: np.ndarray  # (I, f)
    a: float  # calibration slope
    b: float  # calibration intercept

    def member_index(self, member_ids: np.ndarray) -> np.ndarray:
        return _index(self.member_ids, np.asarray(member_ids), "member_id")

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        return _index(self.item_ids, np.asarray(item_ids), "item_id")

    def predicted_rating(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """r_hat for row indices u, i (same shape)."""
        return self.mu + self.member_bias[u] + self.item_bias[i] + np.einsum("nf,nf->n", self.P[u], self.Q[i])

    def like_logit(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return self.a * self.predicted_rating(u, i) + self.b

    def like_probability(self, member_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        u, i = self.member_index(member_ids), self.item_index(item_ids)
        return 1.0 / (1.0 + np.exp(-self.like_logit(u, i)))

    def like_matrix(self, member_rows: np.ndarray) -> np.ndarray:
        """(n, I) P(like) of the given member rows for every item."""
        r = (
            self.mu
            + self.member_bias[member_rows, None]
            + self.item_bias[None, :]
            + self.P[member_rows] @ self.Q.T
        )
        return 1.0 / (1.0 + np.exp(-(self.a * r + self.b)))


def _index(sorted_ids: np.ndarray, query: np.ndarray, column: str) -> np.ndarray:
    return sorted_index(
        sorted_ids,
        query,
        where=f"column '{column}'",
        unknown="id(s) unknown to the simulator",
        fix="Simulate only members and items of its dataset.",
    )


def _als_side(rows, cols, resid, n_rows, other, reg):
    """Solve each row's factors and bias given the other side's factors: ridge on [factors, 1]."""
    f = other.shape[1]
    out_f = np.zeros((n_rows, f))
    out_b = np.zeros(n_rows)
    order = np.argsort(rows, kind="stable")
    rows_s, cols_s, res_s = rows[order], cols[order], resid[order]
    bounds = np.searchsorted(rows_s, np.arange(n_rows + 1))
    eye = reg * np.eye(f + 1)
    for r in range(n_rows):
        lo, hi = bounds[r], bounds[r + 1]
        if lo == hi:
            continue
        x = np.hstack([other[cols_s[lo:hi]], np.ones((hi - lo, 1))])
        sol = np.linalg.solve(x.T @ x + eye, x.T @ res_s[lo:hi])
        out_f[r], out_b[r] = sol[:f], sol[f]
    return out_f, out_b


def fit_affinity(ratings: pa.Table, config: AffinityConfig | None = None) -> AffinityModel:
    """Fit on an INTERACTIONS table (member_id, item_id, rating)."""
    cfg = config or AffinityConfig()
    members, u = np.unique(ratings["member_id"].to_numpy(), return_inverse=True)
    items, i = np.unique(ratings["item_id"].to_numpy(), return_inverse=True)
    r = ratings["rating"].to_numpy().astype(np.float64)
    rng = np.random.default_rng(cfg.seed)
    mu = float(r.mean())
    P = rng.normal(0, 0.1, (len(members), cfg.rank))
    Q = rng.normal(0, 0.1, (len(items), cfg.rank))
    bu, bi = np.zeros(len(members)), np.zeros(len(items))
    for _ in range(cfg.iters):
        P, bu = _als_side(u, i, r - mu - bi[i], len(members), Q, cfg.reg)
        Q, bi = _als_side(i, u, r - mu - bu[u], len(items), P, cfg.reg)

    # logistic calibration of r_hat to liked, by Newton's method on two parameters
    r_hat = mu + bu[u] + bi[i] + np.einsum("nf,nf->n", P[u], Q[i])
    y = (r >= cfg.like_threshold).astype(np.float64)
    x = np.stack([r_hat, np.ones_like(r_hat)], 1)
    w = np.zeros(2)
    for _ in range(25):
        p = 1 / (1 + np.exp(-x @ w))
        g = x.T @ (p - y)
        h = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        w -= np.linalg.solve(h, g)
    return AffinityModel(members, items, mu, bu, bi, P, Q, float(w[0]), float(w[1]))
