"""The large MLP with dense gating (LiRank section 3.4, after GateNet's hidden gates)."""

from __future__ import annotations

import torch
from torch import nn


class GatedLayer(nn.Module):
    """h' = SiLU(W h + b) * sigmoid(W_g h + b_g)   (gate off: h' = SiLU(W h + b))

    Shapes: h (B, d_in) -> (B, d_out)
    """

    def __init__(self, d_in: int, d_out: int, gated: bool = True, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.gate = nn.Linear(d_in, d_out) if gated else None
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = nn.functional.silu(self.linear(h))
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(h))
        return self.drop(out)


class GatedMLP(nn.Module):
    """A stack of (optionally gated) layers; the paper's large MLP is 4 x 3500.

    Args:
        d_in: input width.  widths: hidden widths.  gated: dense gating on every layer.
    Shapes: x (B, d_in) -> (B, widths[-1])
    """

    def __init__(self, d_in: int, widths: tuple[int, ...], gated: bool = True, dropout: float = 0.0):
        super().__init__()
        dims = (d_in, *widths)
        self.layers = nn.Sequential(
            *[GatedLayer(a, b, gated, dropout) for a, b in zip(dims, dims[1:], strict=False)]
        )
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
