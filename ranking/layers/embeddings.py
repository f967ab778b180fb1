"""Sparse id embeddings: the quotient-remainder (QR) trick over hashed ids, and plain tables."""

from __future__ import annotations

import math

import torch
from torch import nn

RARE_ID = -1  # a 'qr' id the frequency filter drops, or never saw: the field's learned rare row
PAD_ID = -2  # an empty slot of a multi-valued field's row


class QREmbedding(nn.Module):
    """Quotient-remainder embedding of hashed ids (Shi et al. 2020; LiRank section 3.7).

    idx = h mod N,  e(h) = E_q[idx // m] + E_r[idx mod m],  m = ceil(sqrt(N))

    Two tables of about sqrt(N) rows each stand in for one of N rows; every idx < N gets a distinct
    (quotient, remainder) pair, so distinct ids collide only through the hash, never through the split.

    Args:
        buckets: N, the hash space.
        dim: D, embedding width.
        divisor: m; defaults to ceil(sqrt(N)).
        rare_row: add one learned row for RARE_ID (ids the field's frequency filter drops: rare in
            training, or new), so they do not read rows that other ids trained.
    Shapes: ids (...) int64, non-negative or RARE_ID -> (..., D)
    """

    def __init__(self, buckets: int, dim: int, divisor: int | None = None, rare_row: bool = False):
        super().__init__()
        if buckets < 2:
            raise ValueError(f"QREmbedding buckets={buckets}: must be >= 2.")
        self.buckets = buckets
        self.divisor = divisor or math.isqrt(buckets - 1) + 1
        self.quotient = nn.Embedding(-(-buckets // self.divisor), dim)
        self.remainder = nn.Embedding(self.divisor, dim)
        for table in (self.quotient, self.remainder):
            nn.init.normal_(table.weight, std=dim**-0.5 / 2)
        self.rare = nn.Parameter(torch.zeros(dim)) if rare_row else None

    def split(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.remainder(ids, self.buckets)
        return torch.div(idx, self.divisor, rounding_mode="floor"), torch.remainder(idx, self.divisor)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, r = self.split(ids.clamp(min=0))
        e = self.quotient(q) + self.remainder(r)  # (..., D)
        if self.rare is None:
            return e
        return torch.where((ids == RARE_ID).unsqueeze(-1), self.rare, e)


class TableEmbedding(nn.Module):
    """A plain embedding table for a small known vocabulary; row 0 is the shared unknown-value row.

    Shapes: ids (...) int64 in [0, vocab] -> (..., D)
    """

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size + 1, dim)
        nn.init.normal_(self.table.weight, std=dim**-0.5 / 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids.clamp(min=0))


class SparseArch(nn.Module):
    """One embedding module per sparse field; returns the fields' embeddings stacked. A multi-valued
    field takes `width` columns of the batch and is mean-pooled over its non-PAD_ID values.

    Args:
        tables: field name -> embedding module, in the batch's field order.
        widths: columns per field (1, or a multi field's max_values); default all 1.
    Shapes: ids (B, W) int64, W = sum(widths) -> (B, F, D)
    """

    def __init__(self, tables: dict[str, nn.Module], widths: list[int] | None = None):
        super().__init__()
        self.tables = nn.ModuleDict(tables)
        self.widths = list(widths or [1] * len(tables))
        if len(self.widths) != len(tables) or min(self.widths, default=1) < 1:
            raise ValueError(f"SparseArch widths={self.widths}: one width >= 1 per table ({len(tables)}).")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, at = [], 0
        for t, w in zip(self.tables.values(), self.widths, strict=True):
            if w == 1:
                out.append(t(ids[:, at]))
            else:
                x = ids[:, at : at + w]  # (B, w)
                mask = (x != PAD_ID).unsqueeze(-1).to(torch.float32)
                e = t(torch.where(x == PAD_ID, torch.zeros_like(x), x))  # (B, w, D)
                out.append((e * mask).sum(1) / mask.sum(1).clamp(min=1.0))
            at += w
        return torch.stack(out, dim=1)

    def table(self, name: str) -> nn.Module:
        return self.tables[name]
