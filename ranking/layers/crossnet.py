"""Residual DCN: low-rank cross layers in parallel with attention low-rank cross layers (LiRank 3.3)."""

from __future__ import annotations

import torch
from torch import nn


class LowRankCross(nn.Module):
    """One low-rank DCNv2 cross layer.

    x_{l+1} = x_0 * (U (V^T x_l) + b) + x_l,   U, V in R^{d x r}

    Args:
        dim: d, the width of x_0.
        rank: r.
    Shapes: x0, xl (B, d) -> (B, d)
    """

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.V = nn.Linear(dim, rank, bias=False)
        self.U = nn.Linear(rank, dim)
        nn.init.xavier_uniform_(self.V.weight)
        nn.init.xavier_uniform_(self.U.weight)
        nn.init.zeros_(self.U.bias)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return x0 * self.U(self.V(xl)) + xl  # (B, d)


class AttentionLowRankCross(LowRankCross):
    """Attention low-rank cross layer: the low-rank map duplicated into query, key and value, with an
    r x r scaled dot-product score matrix between the low-rank maps.

    v = V^T x_l,  q = Q^T x_l,  k = K^T x_l                  (B, r) each
    S = softmax(q k^T / (tau sqrt(r)))  row-wise              (B, r, r)
    x_{l+1} = x_0 * (U (S v) + b) + x_l                       skip connection through x_l

    With S = I this is exactly `LowRankCross` with the same U, V, b.
    Args:
        dim: d.  rank: r.  temperature: tau, > 0.
    Shapes: x0, xl (B, d) -> (B, d)
    """

    def __init__(self, dim: int, rank: int, temperature: float = 1.0):
        super().__init__(dim, rank)
        if temperature <= 0:
            raise ValueError(f"AttentionLowRankCross temperature={temperature}: must be > 0.")
        self.Q = nn.Linear(dim, rank, bias=False)
        self.K = nn.Linear(dim, rank, bias=False)
        self.scale = 1.0 / (temperature * rank**0.5)

    def scores(self, xl: torch.Tensor) -> torch.Tensor:
        q, k = self.Q(xl), self.K(xl)  # (B, r)
        return torch.softmax(q.unsqueeze(2) * k.unsqueeze(1) * self.scale, dim=-1)  # (B, r, r)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        s = self.scores(xl) if scores is None else scores  # (B, r, r)
        h = torch.bmm(s, self.V(xl).unsqueeze(2)).squeeze(2)  # (B, r)
        return x0 * self.U(h) + xl  # (B, d)


class CrossStack(nn.Module):
    """L cross layers applied in sequence to (x_0, x_l). Shapes: x0 (B, d) -> (B, d)"""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class ResidualDCN(nn.Module):
    """A low-rank cross stack and an attention low-rank cross stack run in parallel on x_0; their
    outputs are concatenated for the MLP above.

    Args:
        low_rank: the DCNv2 stack.  attention: the attention stack, or None for plain DCNv2.
    Shapes: x0 (B, d) -> (B, d) or (B, 2d)
    """

    def __init__(self, low_rank: CrossStack, attention: CrossStack | None):
        super().__init__()
        self.low_rank = low_rank
        self.attention = attention

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        out = self.low_rank(x0)
        if self.attention is None:
            return out
        return torch.cat([out, self.attention(x0)], dim=1)


def build_cross(kind: str, dim: int, layers: int, rank: int, temperature: float) -> tuple[nn.Module, int]:
    """The interaction arch named by config ('none', 'dcnv2', 'residual') and its output width."""
    if kind == "none":
        return nn.Identity(), dim
    low = CrossStack([LowRankCross(dim, rank) for _ in range(layers)])
    if kind == "dcnv2":
        return ResidualDCN(low, None), dim
    if kind == "residual":
        attn = CrossStack([AttentionLowRankCross(dim, rank, temperature) for _ in range(layers)])
        return ResidualDCN(low, attn), 2 * dim
    raise ValueError(f"cross={kind!r}: use 'none', 'dcnv2' or 'residual'.")
