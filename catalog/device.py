"""Where a model trains or scores, one rule for all three models (the novelty and alignment LLMs, the
LiRank ranker): 'auto' is CUDA when there is one, else the CPU. Here, in the package every other one may
import, so ranking/ (which imports catalog only) and lm/ share it. torch loads when it is called."""

from __future__ import annotations


def pick_device(device: str = "auto"):
    """A torch.device for 'auto', 'cpu' or 'cuda[:n]'; a CUDA device on a machine without one is a ValueError."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
    return torch.device(device)
