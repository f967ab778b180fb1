"""The learning-rate schedule both LLMs train with: linear warm-up, then cosine decay to 10%."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The LR multiplier at `step` of `total`: (step + 1) / warmup during the warm-up, then a cosine from
    1 down to 0.1 at the last step (for torch.optim.lr_scheduler.LambdaLR)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
