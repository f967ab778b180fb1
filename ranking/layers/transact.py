"""TransAct history encoder (Xia et al. 2023; LiRank section 3.5)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with a key-padding mask.

    x = x + MHA(LN(x));  x = x + W_2 ReLU(W_1 LN(x))
    Shapes: x (B, L, E), mask (B, L) bool (True = real token) -> (B, L, E)
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"TransAct width {dim} is not divisible by heads={heads}; pick heads dividing it."
            )
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, E = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, E // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, E/H)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, E))
        return x + self.ff(self.norm2(x))  # (B, L, E)


class TransAct(nn.Module):
    """Encodes the member's recent actions against the candidate item.

    token_j = [e_item(h_j) ; e_action(a_j) ; e_item(candidate)]     early fusion, E = 2D + D_a
    Z = Encoder^n(tokens)                                            n layers, feed-forward E/2
    out = [maxpool_j Z_j ; Z_{L-k+1} ; ... ; Z_L]                    (B, (k+1) E)

    The history is right-aligned: the most recent action sits at position L-1, padding on the left.
    Padded tokens are zeroed and masked. A row with an empty history reads as one empty token (only
    the candidate part is non-zero), so it still gets a defined output.

    Args:
        item_dim: D, width of the item embedding (shared with the candidate's item field).
        n_actions: action vocabulary size (0 is padding).  action_dim: D_a.
        layers: encoder layers (paper: 2).  heads: attention heads.  last_k: k (paper: 5).
    Shapes: items (B, L, D), actions (B, L), mask (B, L) bool, candidate (B, D) -> (B, (k+1) E),
        E = 2D + D_a
    """

    def __init__(
        self,
        item_dim: int,
        n_actions: int,
        action_dim: int,
        layers: int = 2,
        heads: int = 2,
        last_k: int = 5,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.action = nn.Embedding(n_actions, action_dim, padding_idx=0)
        self.width = 2 * item_dim + action_dim
        self.encoder = nn.ModuleList(
            [EncoderLayer(self.width, heads, max(self.width // 2, 1), dropout) for _ in range(layers)]
        )
        self.last_k = last_k
        self.out_dim = (last_k + 1) * self.width

    def forward(
        self, items: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, candidate: torch.Tensor
    ) -> torch.Tensor:
        B, L, _ = items.shape
        keep = mask.unsqueeze(-1).to(items.dtype)  # (B, L, 1): real actions keep their content
        mask = mask.clone()
        mask[:, -1] |= ~mask.any(dim=1)  # an empty history attends to one empty token
        hist = torch.cat([items, self.action(actions)], dim=-1) * keep  # (B, L, D + D_a)
        x = torch.cat([hist, candidate.unsqueeze(1).expand(B, L, -1)], dim=-1)  # (B, L, E)
        for layer in self.encoder:
            x = layer(x, mask)
        pooled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, E)
        return torch.cat([pooled, x[:, L - self.last_k :].reshape(B, -1)], dim=1)  # (B, (k+1) E)
