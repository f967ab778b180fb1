"""Sparse id embeddings: the quotient-remainder (QR) trick over hashed ids, and plain tables."""

from __future__ import annotations

import math

import torch
from torch import nn


class QREmbedding(nn.Module):
    """Quotient-remainder embedding of hashed ids (Shi et al. 2020; LiRank section 3.7).

    idx = h mod N,  e(h) = E_q[idx // m] + E_r[idx mod m],  m = ceil(sqrt(N))

    Two tables of about sqrt(N) rows each stand in for one of N rows; every idx < N gets a distinct
    (quotient, remainder) pair, so distinct ids collide only through the hash, never through the split.

    Args:
        buckets: N, the hash space.
        dim: D, embedding width.
        divisor: m; defaults to ceil(sqrt(N)).
    Shapes: ids (...) int64 non-negative -> (..., D)
    """

    def __init__(self, buckets: int, dim: int, divisor: int | None = None):
        super().__init__()
        if buckets < 2:
            raise ValueError(f"QREmbedding buckets={buckets}: must be >= 2.")
        self.buckets = buckets
        self.divisor = divisor or math.isqrt(buckets - 1) + 1
        self.quotient = nn.Embedding(-(-buckets // self.divisor), dim)
        self.remainder = nn.Embedding(self.divisor, dim)
        for table in (self.quotient, self.remainder):
            nn.init.normal_(table.weight, std=dim**-0.5 / 2)

    def split(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.remainder(ids, self.buckets)
        return torch.div(idx, self.divisor, rounding_mode="floor"), torch.remainder(idx, self.divisor)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, r = self.split(ids)
        return self.quotient(q) + self.remainder(r)  # (..., D)


class TableEmbedding(nn.Module):
    """A plain embedding table for a small known vocabulary; row 0 is the shared unknown-value row.

    Shapes: ids (...) int64 in [0, vocab] -> (..., D)
    """

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size + 1, dim)
        nn.init.normal_(self.table.weight, std=dim**-0.5 / 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class SparseArch(nn.Module):
    """One embedding module per sparse field; returns the fields' embeddings stacked.

    Args:
        tables: field name -> embedding module, in the batch's field order.
    Shapes: ids (B, F) int64 -> (B, F, D)
    """

    def __init__(self, tables: dict[str, nn.Module]):
        super().__init__()
        self.tables = nn.ModuleDict(tables)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(ids[:, i]) for i, t in enumerate(self.tables.values())], dim=1)

    def table(self, name: str) -> nn.Module:
        return self.tables[name]
