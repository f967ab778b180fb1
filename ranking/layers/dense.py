"""Numeric features, batch-normalised before they enter the cross network."""

from __future__ import annotations

import torch
from torch import nn


class DenseArch(nn.Module):
    """Batch norm on the numeric inputs (LiRank section 3.2: it keeps DCNv2 from diverging).

    y = (x - mu_B) / sqrt(var_B + eps) * gamma + beta  (running statistics at inference)

    NaN and inf never reach this layer: the featurizer imputes them (ranking/features.py).
    Args:
        n_features: F_d; with 0 the arch returns an empty (B, 0) tensor.
        batch_norm: off for the ablation baseline.
    Shapes: x (B, F_d) -> (B, F_d)
    """

    def __init__(self, n_features: int, batch_norm: bool = True):
        super().__init__()
        self.n_features = n_features
        self.norm = nn.BatchNorm1d(n_features) if batch_norm and n_features else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)
