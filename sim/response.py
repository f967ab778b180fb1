"""How a simulated member responds to one impression (member, item, cluster, position, context).

For an impression at 0-based position k with true like probability p = P(like | member, item):

    examined        ~ Bernoulli((1 + k) ** -position_eta)                      position bias
    click | exam.   ~ Bernoulli(sigmoid(click_bias + click_slope * logit(p) + eps)),  eps ~ N(0, noise_sd)
    like  | click   ~ Bernoulli(p)
    share | like    ~ Bernoulli(share_rate * p)
    skip            ~ Bernoulli(skip_rate * (1 - p))   only for an examined, unclicked impression
    dwell | click   log-normal body around the content type's median, longer when liked, shorter lower
                    on the page; with probability tail_prob a Pareto(tail_alpha) draw instead: a heavy tail
    dwell           0 without a click
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ResponseConfig:
    position_eta: float = 0.8  # examination probability (1 + k)^-eta at position k
    click_bias: float = 0.0  # click logit at an even like chance
    click_slope: float = 1.0  # weight of the like logit in the click logit
    noise_sd: float = 0.5  # per-impression noise on the click logit
    share_rate: float = 0.2  # P(share | like) = share_rate * p
    skip_rate: float = 0.35  # P(skip | examined, no click) = skip_rate * (1 - p)
    dwell_median_s: dict[str, float] = field(default_factory=lambda: {"movie": 45.0, "trailer": 18.0})
    dwell_sigma: float = 0.9  # log-normal spread of the body
    like_dwell_boost: float = 0.7  # log-dwell added when the member likes the item
    position_dwell_decay: float = 0.03  # log-dwell removed per position
    tail_prob: float = 0.05  # share of clicks whose dwell comes from the heavy tail
    tail_alpha: float = 1.3  # Pareto exponent of the tail (smaller: heavier)

    def __post_init__(self):
        if self.position_eta < 0:
            raise ValueError(f"ResponseConfig.position_eta={self.position_eta}: must be >= 0.")
        for name in ("share_rate", "skip_rate", "tail_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ResponseConfig.{name}={getattr(self, name)}: must be in [0, 1].")
        if self.tail_alpha <= 1:
            raise ValueError(f"ResponseConfig.tail_alpha={self.tail_alpha}: must be > 1 (finite mean).")
        if not self.dwell_median_s or min(self.dwell_median_s.values()) <= 0:
            raise ValueError(f"ResponseConfig.dwell_median_s={self.dwell_median_s}: need positive medians.")


@dataclass(frozen=True)
class Responses:
    click: np.ndarray  # (N,) bool
    like: np.ndarray
    share: np.ndarray
    skip: np.ndarray
    dwell_s: np.ndarray  # (N,) float32


def respond(
    p_like: np.ndarray,
    position: np.ndarray,
    content_type: np.ndarray,
    cfg: ResponseConfig,
    rng: np.random.Generator,
) -> Responses:
    """Vectorised responses for N impressions with true like probabilities `p_like`."""
    n = len(p_like)
    p = np.clip(p_like, 1e-6, 1 - 1e-6)
    unknown = set(np.unique(content_type).tolist()) - set(cfg.dwell_median_s)
    if unknown:
        raise ValueError(
            f"column 'content_type': unknown value(s) {sorted(unknown)}; the simulator knows "
            f"{sorted(cfg.dwell_median_s)} (ResponseConfig.dwell_median_s)."
        )
    examined = rng.random(n) < (1.0 + position) ** -cfg.position_eta
    logit = cfg.click_bias + cfg.click_slope * np.log(p / (1 - p)) + rng.normal(0, cfg.noise_sd, n)
    click = examined & (rng.random(n) < 1 / (1 + np.exp(-logit)))
    like = click & (rng.random(n) < p)
    share = like & (rng.random(n) < cfg.share_rate * p)
    skip = examined & ~click & (rng.random(n) < cfg.skip_rate * (1 - p))

    median = np.vectorize(cfg.dwell_median_s.__getitem__, otypes=[float])(content_type) if n else np.zeros(0)
    log_d = (
        np.log(median)
        + cfg.like_dwell_boost * like
        - cfg.position_dwell_decay * position
        + rng.normal(0, cfg.dwell_sigma, n)
    )
    body = np.exp(log_d)
    tail = median * (1 + rng.pareto(cfg.tail_alpha, n)) * 2.0
    dwell = np.where(rng.random(n) < cfg.tail_prob, tail, body)
    dwell = np.where(click, dwell, 0.0).astype(np.float32)
    return Responses(click, like, share, skip, dwell)
