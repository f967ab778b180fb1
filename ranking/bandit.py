"""Explore/exploit with a Bayesian last layer and Thompson sampling (LiRank section 3.8).

Bayesian linear regression of a task's label on the last layer's input phi (with a constant 1
appended for the bias):

prior  w ~ N(0, tau^-1 I),  likelihood y = phi~^T w + eps, eps ~ N(0, sigma^2)
A = tau I + Phi~^T Phi~ / sigma^2,   b = Phi~^T y / sigma^2
posterior  w ~ N(mu = A^-1 b, Sigma = A^-1)

A and b are sums over examples, so the posterior is updated incrementally: the posterior at the end
of one training period is the prior of the next (`update` with each period's data gives exactly the
closed form on all data). Thompson sampling draws one w~ from the posterior per request and scores
every candidate with phi~^T w~; uncertain candidates (phi far from what was observed) spread more,
so they are sometimes ranked up and their outcome is learned.
"""

from __future__ import annotations

import torch


class BayesianLastLayer:
    """Args:
        dim: H, width of the last layer's input.
        prior_precision: tau.  noise: sigma, the label noise standard deviation.
    Shapes: phi (N, H), y (N,) -> scores (N,)
    """

    def __init__(self, dim: int, prior_precision: float = 1.0, noise: float = 0.5):
        if prior_precision <= 0 or noise <= 0:
            raise ValueError(
                f"BayesianLastLayer prior_precision={prior_precision}, noise={noise}: both must be > 0."
            )
        self.dim, self.prior_precision, self.noise = dim, prior_precision, noise
        self.precision = prior_precision * torch.eye(dim + 1, dtype=torch.float64)  # A
        self.b = torch.zeros(dim + 1, dtype=torch.float64)
        self.n_seen = 0
        self._cache = None

    @staticmethod
    def _augment(phi: torch.Tensor) -> torch.Tensor:
        phi = phi.detach().to(torch.float64)
        return torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)], dim=1)

    def update(self, phi: torch.Tensor, y: torch.Tensor) -> None:
        """Add one period's (phi, y) to the posterior."""
        if phi.ndim != 2 or phi.shape[1] != self.dim or y.shape != (phi.shape[0],):
            raise ValueError(
                f"BayesianLastLayer.update: phi must be (N, {self.dim}) and y (N,); got {tuple(phi.shape)} "
                f"and {tuple(y.shape)}."
            )
        x = self._augment(phi).cpu()
        s2 = self.noise**2
        self.precision += x.T @ x / s2
        self.b += x.T @ y.detach().cpu().to(torch.float64) / s2
        self.n_seen += phi.shape[0]
        self._cache = None

    def _posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            chol = torch.linalg.cholesky(self.precision)  # A = L L^T
            mean = torch.cholesky_solve(self.b.unsqueeze(1), chol).squeeze(1)
            self._cache = (mean, chol)
        return self._cache

    @property
    def mean(self) -> torch.Tensor:
        return self._posterior()[0]

    @property
    def covariance(self) -> torch.Tensor:
        return torch.cholesky_inverse(self._posterior()[1])

    def sample_weights(self, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, H+1) draws from the posterior: w = mu + L^-T z, z ~ N(0, I) (since A^-1 = L^-T L^-1)."""
        mean, chol = self._posterior()
        z = torch.randn(n, self.dim + 1, dtype=torch.float64, generator=generator)
        return mean + torch.linalg.solve_triangular(chol.T, z.T, upper=True).T

    def mean_scores(self, phi: torch.Tensor) -> torch.Tensor:
        return (self._augment(phi).cpu() @ self.mean).to(torch.float32)

    def thompson_scores(self, phi: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One posterior draw shared by every row of `phi` (one request's candidates)."""
        w = self.sample_weights(1, generator)[0]
        return (self._augment(phi).cpu() @ w).to(torch.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "precision": self.precision.clone(),
            "b": self.b.clone(),
            "meta": torch.tensor(
                [self.dim, self.prior_precision, self.noise, self.n_seen], dtype=torch.float64
            ),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> BayesianLastLayer:
        dim, tau, noise, n_seen = state["meta"].tolist()
        blr = cls(int(dim), tau, noise)
        blr.precision, blr.b, blr.n_seen = state["precision"].clone(), state["b"].clone(), int(n_seen)
        return blr
