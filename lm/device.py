"""Where a model trains or scores: CUDA when there is one, else the CPU."""

from __future__ import annotations

import torch


def pick_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else the CPU; a CUDA device on a machine without one is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
    return torch.device(device)
