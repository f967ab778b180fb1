"""Batch scoring with a trained alignment model: P(engage) for many (history key, candidate) pairs.

Pairs are encoded once, sorted by length so each batch pads little, and scored without gradients
(bfloat16 autocast on CUDA). The same code serves evaluation during training, the Ray Data stage of
the bulk job and the benchmark.

    scorer = AlignmentScorer("runs/.../alignment")            # device "auto": CUDA when present
    probs = scorer.score([(3, 17), (3, 17)], [5, 9])            # one probability per pair, input order
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import torch

from alignment.model import AlignmentModel, PairEncoder, load_alignment


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
    return torch.device(device)


@torch.inference_mode()
def score_logits(
    model: AlignmentModel,
    encoder: PairEncoder,
    keys: Sequence[tuple[int, ...]],
    candidates: Sequence[int],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits s(h, c) for each pair, in input order."""
    seqs = [encoder(tuple(k), int(c)) for k, c in zip(keys, candidates, strict=True)]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty(len(seqs), dtype=np.float32)
    device = torch.device(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = encoder.collate([seqs[i] for i in idx], device)
        with autocast:
            out[idx] = model(ids, mask).float().cpu().numpy()
    return out


class AlignmentScorer:
    """A saved alignment model, ready to score.

    Args:
        folder: the model folder (python -m jobs.train_alignment).
        device: "auto" (CUDA when present), "cpu" or "cuda[:n]".
        batch_size: pairs per forward pass.
    """

    def __init__(self, folder: str | os.PathLike, *, device: str = "auto", batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f"AlignmentScorer batch_size={batch_size}: must be >= 1.")
        self.device = pick_device(device)
        self.model, self.encoder, self.info = load_alignment(folder, self.device)
        self.vocab = self.encoder.vocab
        self.batch_size = batch_size

    def score(self, keys: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        """P(engage) per (key, candidate) pair, in input order; unknown cluster ids are a ValueError."""
        m = self.vocab.size
        bad = [c for c in candidates if not 0 <= int(c) < m]
        if bad:
            raise ValueError(f"candidates: unknown cluster id(s) {bad[:5]}; the model knows 0..{m - 1}.")
        k = len(keys[0]) if len(keys) else 0
        checked = [self.vocab.check_key(key, k, field=f"keys[{i}]") for i, key in enumerate(keys)]
        logits = score_logits(
            self.model, self.encoder, checked, candidates, batch_size=self.batch_size, device=self.device
        )
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
