"""8-bit row-wise middle-max quantization of embedding tables, used at inference (LiRank section 3.10).

Per row w (D values):
middle = (max w + min w) / 2,   scale = (max w - min w) / 255
q = clamp(floor((w - middle) / scale), -128, 127)          int8; max maps to 127, min to -128
w^ = middle + (q + 1/2) scale                              |w - w^| <= scale / 2

Centring each row on its middle uses the whole signed int8 range whatever the row's offset; a
constant row (scale 0) stores q = 0 and reconstructs exactly. Storage per row: D bytes + two float32
(middle, scale) against 4 D bytes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def middle_max_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, D) float -> q (R, D) int8, middle (R,) float32, scale (R,) float32."""
    w = w.detach().to(torch.float32)
    hi, lo = w.max(dim=1).values, w.min(dim=1).values
    middle = (hi + lo) / 2
    scale = (hi - lo) / 255
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.floor((w - middle[:, None]) / safe[:, None]).clamp(-128, 127)
    q = torch.where(scale[:, None] > 0, q, torch.zeros_like(q))
    return q.to(torch.int8), middle, scale


def middle_max_dequantize(q: torch.Tensor, middle: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return middle[..., None] + (q.to(torch.float32) + 0.5) * scale[..., None]


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as middle-max int8; looked-up rows are dequantized on the fly.

    Shapes: ids (...) int64 -> (..., D) float32
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        q, middle, scale = middle_max_quantize(weight)
        self.register_buffer("q", q)
        self.register_buffer("middle", middle)
        self.register_buffer("scale", scale)
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return middle_max_dequantize(self.q[ids], self.middle[ids], self.scale[ids])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.middle, self.scale))


def _swap(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Embedding):
            setattr(module, name, QuantizedEmbedding(child.weight))
            count += 1
        else:
            count += _swap(child)
    return count


def quantize_embeddings(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` whose id embedding tables (its `sparse` arch) are middle-max int8; `model`
    itself is left where it is, unchanged."""
    qmodel = copy.deepcopy(model).cpu().eval()
    _swap(qmodel.sparse)
    return qmodel


def embedding_bytes(model: nn.Module) -> int:
    """Bytes held by the id embedding tables, float or quantized."""
    total = 0
    for m in model.sparse.modules():
        if isinstance(m, QuantizedEmbedding):
            total += m.nbytes()
        elif isinstance(m, nn.Embedding):
            total += m.weight.numel() * m.weight.element_size()
    return total
