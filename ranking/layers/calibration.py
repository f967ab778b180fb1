"""The isotonic calibration layer, co-trained with the model (LiRank section 3.1, eq. 1)."""

from __future__ import annotations

import torch
from torch import nn


class IsotonicCalibration(nn.Module):
    """Monotone piecewise-linear map of each task's logit, with weights shifted by calibration features.

    b_i = lo + i * step,  v_i(z) = clamp(z - b_i, 0, step)               i = 0..n-1, hi = lo + n step
    w_i(c) = ReLU(a_i + sum_f E_f[c_f]_i)                                non-negative by construction
    y = lo + sum_i w_i(c) v_i(z)

    Every w_i >= 0, so y is non-decreasing in z for any calibration features c. With a_i = 1 and E = 0
    (the initialisation) y = z on [lo, hi]: training starts from the identity. Logits outside [lo, hi]
    saturate.

    Args:
        n_tasks: T, one calibration curve per task.  n_buckets: n.  lo, hi: the bucketized logit range.
        calib_vocab: vocabulary size of each calibration feature (empty: no features).
    Shapes: z (B, T), calib (B, F_c) int64 -> (B, T)
    """

    def __init__(self, n_tasks: int, n_buckets: int, lo: float, hi: float, calib_vocab: tuple[int, ...] = ()):
        super().__init__()
        if not hi > lo or n_buckets < 1:
            raise ValueError(
                f"IsotonicCalibration range [{lo}, {hi}] with {n_buckets} buckets: need hi > lo, n >= 1."
            )
        self.lo, self.step = lo, (hi - lo) / n_buckets
        self.register_buffer("edges", lo + self.step * torch.arange(n_buckets, dtype=torch.float32))
        self.weight = nn.Parameter(torch.ones(n_tasks, n_buckets))
        self.features = nn.ModuleList([nn.Embedding(v + 1, n_tasks * n_buckets) for v in calib_vocab])
        for emb in self.features:
            nn.init.zeros_(emb.weight)

    def bucket_weights(self, calib: torch.Tensor | None, batch: int) -> torch.Tensor:
        w = self.weight.unsqueeze(0).expand(batch, -1, -1)  # (B, T, n)
        for f, emb in enumerate(self.features):
            w = w + emb(calib[:, f]).view(batch, *self.weight.shape)
        return torch.relu(w)

    def forward(self, z: torch.Tensor, calib: torch.Tensor | None = None) -> torch.Tensor:
        v = (z.unsqueeze(-1) - self.edges).clamp(0.0, self.step)  # (B, T, n)
        return self.lo + (self.bucket_weights(calib, z.shape[0]) * v).sum(-1)  # (B, T)
