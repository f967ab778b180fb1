"""The prior a residual alignment model corrects: a fixed logit per (history key, candidate) pair,

    prior(h, c) = logit(r_c) + a_h

r_c: candidate c's impression-weighted mean label over the training pairs, shrunk towards the overall mean
by `strength` pseudo-impressions (alignment.evaluate.smoothed_rate). a_h (kind "key_offset" only): the
key's logit offset fitted on its training pairs with r_c held fixed (alignment.evaluate.key_offsets, the
key_offset baseline); a key without feedback gets a_h = 0. Kind "candidate" has no a_h.

Saved as prior.safetensors in the model folder: logit (M,) float32, and for key_offset also key_ids (H, K)
int64 and key_logit (H,) float32. A folder without the file (every model saved before residual training)
has no prior: its score is the LM's alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignment.evaluate import key_offsets, logit, smoothed_rate
from alignment.pairs import PairSet

PRIOR_FILE = "prior.safetensors"
PRIORS = ("none", "candidate", "key_offset")


@dataclass(frozen=True)
class AlignmentPrior:
    """prior(h, c) = candidate[c] + keys.get(h, 0) (module docstring)."""

    candidate: np.ndarray  # (M,) logit(r_c)
    keys: dict[tuple[int, ...], float] = field(default_factory=dict)  # a_h ("key_offset"), else empty

    @classmethod
    def fit(cls, train: PairSet, n_clusters: int, kind: str, strength: float) -> AlignmentPrior:
        if kind not in PRIORS[1:]:
            raise ValueError(f"AlignmentPrior kind={kind!r}: use one of {PRIORS[1:]}.")
        candidate = logit(smoothed_rate(train, n_clusters, strength)).astype(np.float32)
        if kind == "candidate":
            return cls(candidate)
        return cls(
            candidate, key_offsets(train.keys, candidate[train.candidates].astype(np.float64), train.labels)
        )

    def offsets(self, keys, candidates) -> np.ndarray:
        """(N,) float32 prior(h, c) of each pair."""
        out = self.candidate[np.asarray(candidates, np.int64)].astype(np.float32)
        if self.keys:
            out += np.array([self.keys.get(tuple(k), 0.0) for k in keys], np.float32)
        return out

    def save(self, folder: str | os.PathLike) -> None:
        import torch
        from safetensors.torch import save_file

        tensors = {"logit": torch.tensor(self.candidate, dtype=torch.float32)}
        if self.keys:
            tensors["key_ids"] = torch.tensor(list(self.keys), dtype=torch.int64)  # (H, K)
            tensors["key_logit"] = torch.tensor(list(self.keys.values()), dtype=torch.float32)  # (H,)
        save_file(tensors, str(Path(folder) / PRIOR_FILE))

    @classmethod
    def load(cls, folder: str | os.PathLike, n_clusters: int, fix: str) -> AlignmentPrior | None:
        """The folder's prior, None without prior.safetensors; a ValueError naming the file and tensor when
        it does not fit the model's clusters."""
        from safetensors.torch import load_file

        path = Path(folder) / PRIOR_FILE
        if not path.is_file():
            return None
        try:
            t = {k: v.numpy() for k, v in load_file(str(path)).items()}
        except Exception as exc:  # safetensors raises its own error type on a short or corrupt file
            raise ValueError(f"{path}: not a readable safetensors file ({exc}); {fix}.") from exc

        def bad(name: str, want: str) -> ValueError:
            shape = None if name not in t else tuple(t[name].shape)
            return ValueError(
                f"{path}: {name!r} has shape {shape} (or non-finite values); need {want}; {fix}."
            )

        logit_c = t.get("logit")
        if logit_c is None or logit_c.shape != (n_clusters,) or not np.isfinite(logit_c).all():
            raise bad("logit", f"a finite ({n_clusters},) tensor, one per cluster")
        if "key_ids" not in t and "key_logit" not in t:
            return cls(logit_c.astype(np.float32))
        ids, a = t.get("key_ids"), t.get("key_logit")
        if ids is None or ids.ndim != 2 or ((ids < 0) | (ids >= n_clusters)).any():
            raise bad("key_ids", f"an (H, K) tensor of cluster ids below {n_clusters}")
        if a is None or a.shape != (len(ids),) or not np.isfinite(a).all():
            raise bad("key_logit", f"a finite ({len(ids)},) tensor, one per row of key_ids")
        return cls(
            logit_c.astype(np.float32),
            {tuple(int(x) for x in k): float(v) for k, v in zip(ids, a, strict=True)},
        )
