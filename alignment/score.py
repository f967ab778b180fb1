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
from catalog.device import pick_device


@torch.inference_mode()
def score_logits(
    model: AlignmentModel,
    encoder: PairEncoder,
    keys: Sequence[tuple[int, ...]],
    candidates: Sequence[int],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    share_prefix: bool = True,
) -> np.ndarray:
    """Logits s(h, c) for each pair, in input order (the model's prior(h, c) included when it has one).

    share_prefix: the pairs of one key share its history text, so it is run once and its KV cache reused
    by each candidate (the candidates of a key are many); False runs every pair's whole text.
    """
    device = torch.device(device)
    out = np.empty(len(keys), dtype=np.float32)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    for idx, chunk_keys in _batches(encoder, keys, batch_size, share_prefix):
        offset = model.offsets([keys[i] for i in idx], [int(candidates[i]) for i in idx], device)
        with autocast:
            if share_prefix:
                prefix_ids, prefix_mask = encoder.collate([encoder.key_ids(k) for k in chunk_keys], device)
                slot = {k: j for j, k in enumerate(chunk_keys)}
                rows = torch.tensor([slot[tuple(keys[i])] for i in idx], device=device)
                suffix = encoder.collate([encoder.candidate_ids(int(candidates[i])) for i in idx], device)
                logits = model.forward_shared(prefix_ids, prefix_mask, rows, *suffix, offset)
            else:
                logits = model(
                    *encoder.collate([encoder(tuple(keys[i]), int(candidates[i])) for i in idx], device),
                    offset,
                )
        out[idx] = logits.float().cpu().numpy()
    return out


def _batches(encoder: PairEncoder, keys, batch_size: int, by_key: bool):
    """(pair indices, their distinct keys) per batch: about batch_size pairs, whole keys when by_key,
    shortest texts first so a batch pads little."""
    if not by_key:
        order = np.argsort([len(encoder.key_ids(tuple(k))) for k in keys], kind="stable")
        for s in range(0, len(order), batch_size):
            yield order[s : s + batch_size], None
        return
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(tuple(k), []).append(i)
    chunk, idx = [], []
    for k in sorted(groups, key=lambda k: len(encoder.key_ids(k))):
        chunk.append(k)
        idx.extend(groups[k])
        if len(idx) >= batch_size:
            yield np.array(idx), chunk
            chunk, idx = [], []
    if idx:
        yield np.array(idx), chunk


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
        self.model, self.encoder, self.info = load_alignment(folder, self.device)  # info: AlignmentModelInfo
        self.vocab = self.encoder.vocab
        self.batch_size = batch_size

    def score(self, keys: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        """P(engage) per (key, candidate) pair, in input order; unknown cluster ids are a ValueError."""
        if len(keys) != len(candidates):
            raise ValueError(
                f"keys has {len(keys)} entries, candidates {len(candidates)}: give one key per candidate "
                "(repeat a key for each of its candidates)."
            )
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
