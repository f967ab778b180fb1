"""Incremental training (LiRank section 3.9): each period's model starts from, and is held near, the
cold-start model w0 and the previous period's model w_prev, each weighted by its diagonal empirical
Fisher information.

    w_init = alpha w0 + (1 - alpha) w_prev
    penalty(w) = lambda_f / 2 * sum_i [alpha H0_i (w_i - w0_i)^2 + (1 - alpha) Hprev_i (w_i - wprev_i)^2]

alpha is the cold weight (TrainConfig.cold_weight), lambda_f the forgetting factor
(TrainConfig.forgetting_factor; 0 keeps the initialisation and drops the penalty), H0 and Hprev the
diagonal empirical Fisher of the cold-start and previous models (`empirical_fisher`, saved with each
checkpoint as fisher.safetensors). Parameters absent from a state (e.g. a new table) get no prior.
The Trainer applies the prior: it starts from `IncrementalPrior.initial_state` and adds
`IncrementalPrior.penalty` to the loss.

Between periods: a period trains from a warm start (the previous checkpoint) and a cold start (w0).
Each checkpoint records its cold start in config.json (train.cold_start: the one it was trained from,
or itself when trained from scratch), so the next period finds w0 without being told
(`cold_start_path`). `from_checkpoint` loads both checkpoints with their Fisher, checks that they
share one architecture and that the new data fits their schema, and returns the prior with the warm
start's schema and RankerConfig: the new period keeps the previous model's architecture and
vocabularies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ranking.checkpoint import CheckpointConfig, load_model, load_tensors, read_checkpoint_config
from ranking.config import RankerConfig
from ranking.data import ExampleStream
from ranking.model import LiRankModel
from ranking.schema import FeatureSchema
from ranking.train import task_loss

FISHER_FILE = "fisher.safetensors"  # in each checkpoint folder, written by ranking.checkpoint


class IncrementalPrior:
    """The Fisher-weighted prior toward w0 and w_prev (module docstring: the formula).

    Args:
        w0, h0: the cold-start model's state and its diagonal empirical Fisher.
        w_prev, h_prev: the previous model's state and its Fisher; every tensor must have its shape.
        alpha: the cold weight.  forgetting_factor: lambda_f.
    """

    def __init__(
        self, w0: dict, h0: dict, w_prev: dict, h_prev: dict, alpha: float, forgetting_factor: float
    ):
        # every tensor must have the previous model's shape: refuse another architecture up front
        for label, state, keys in (("w0", w0, w_prev), ("H0", h0, h_prev), ("Hprev", h_prev, h_prev)):
            for k in keys:
                want = tuple(w_prev[k].shape) if k in w_prev else None
                got = tuple(state[k].shape) if k in state else None
                if got != want or want is None:
                    raise ValueError(
                        f"IncrementalPrior: {label}[{k!r}] has shape {got or 'none (missing)'}, the previous "
                        f"model's has {want or 'none (missing)'}; the cold-start and previous checkpoints must "
                        "share one architecture (RankerConfig and vocabularies)."
                    )
        self.w0, self.h0, self.w_prev, self.h_prev = w0, h0, w_prev, h_prev
        self.alpha, self.lam = alpha, forgetting_factor

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {k: self.alpha * self.w0[k] + (1 - self.alpha) * self.w_prev[k] for k in self.w_prev}

    def to(self, device: torch.device) -> IncrementalPrior:
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return IncrementalPrior(
            move(self.w0), move(self.h0), move(self.w_prev), move(self.h_prev), self.alpha, self.lam
        )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = None
        for name, w in model.named_parameters():
            if name not in self.h_prev:
                continue
            term = (
                self.alpha * (self.h0[name] * (w - self.w0[name]) ** 2).sum()
                + (1 - self.alpha) * (self.h_prev[name] * (w - self.w_prev[name]) ** 2).sum()
            )
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.lam * total


def empirical_fisher(model: LiRankModel, stream: ExampleStream, n_batches: int, device: torch.device) -> dict:
    """Diagonal empirical Fisher, E[g_i^2] per parameter, estimated as B * mean over batches of the squared
    mean-loss gradient (equal to E[g_i^2] when per-example gradients are uncorrelated around zero mean,
    as near a trained optimum)."""
    model.eval()  # batch norm uses its running statistics
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    seen = 0
    for batch in stream:
        batch = batch.to(device)
        model.zero_grad(set_to_none=True)
        out = model.run(batch)
        task_loss(out.logits, batch.labels, None).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                acc[n] += p.grad.detach() ** 2 * len(batch)
        seen += 1
        if seen >= n_batches:
            break
    model.zero_grad(set_to_none=True)
    return {n: (v / max(seen, 1)).cpu() for n, v in acc.items()}


def load_fisher(folder: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The checkpoint's diagonal empirical Fisher, or None when it has none."""
    path = Path(folder) / FISHER_FILE
    return load_tensors(path) if path.is_file() else None


def cold_start_path(
    warm_start: str | os.PathLike,
    cold_start: str | os.PathLike | None = None,
    *,
    info: CheckpointConfig | None = None,
) -> str:
    """`cold_start` when given, else the cold start the warm start recorded (in its config.json, read
    here unless `info` holds it), else the warm start itself."""
    if cold_start:
        return str(cold_start)
    info = info or read_checkpoint_config(warm_start)[0]
    return info.cold_start or str(warm_start)


@dataclass(frozen=True)
class WarmStart:
    """What the next period trains from: the prior, and the architecture and vocabularies it keeps."""

    prior: IncrementalPrior
    schema: FeatureSchema  # the warm start's: the new period keeps its vocabularies
    config: RankerConfig  # the warm start's: the new period keeps its architecture
    cold_start: str  # the resolved cold-start folder, recorded in the new checkpoint


def from_checkpoint(
    warm_start: str | os.PathLike,
    *,
    cold_start: str | os.PathLike | None = None,
    cold_weight: float,
    forgetting_factor: float,
    data_schema: FeatureSchema | None = None,
) -> WarmStart:
    """The previous (warm-start) and cold-start checkpoints -> the IncrementalPrior of the next period,
    with the warm start's schema and RankerConfig.

    Args:
        warm_start: the previous period's checkpoint folder.
        cold_start: the cold-start checkpoint w0 (default: `cold_start_path`).
        cold_weight: alpha.  forgetting_factor: lambda_f.
        data_schema: the new period's fitted schema; refused when its structure differs from theirs.
    """
    prev_model, prev_schema, prev_config, prev_info = load_model(warm_start, data_schema=data_schema)
    cold_path = cold_start_path(warm_start, cold_start, info=prev_info)
    cold_model, _, cold_config, _ = load_model(cold_path, data_schema=data_schema)
    for f in fields(prev_config):
        a, b = getattr(cold_config, f.name), getattr(prev_config, f.name)
        if a != b:
            raise ValueError(
                f"the cold start {cold_path} has RankerConfig.{f.name}={a!r}, the warm start {warm_start} "
                f"has {b!r}; both must share one architecture. Pass the --cold-start the warm start was "
                "trained from."
            )
    h_prev, h0 = load_fisher(warm_start), load_fisher(cold_path)
    if h_prev is None or h0 is None:
        raise ValueError(
            f"incremental training needs {FISHER_FILE} in {warm_start} and {cold_path}; "
            "retrain those with this job (it writes the Fisher)."
        )
    try:
        prior = IncrementalPrior(
            {k: v.float() for k, v in cold_model.state_dict().items()},
            h0,
            {k: v.float() for k, v in prev_model.state_dict().items()},
            h_prev,
            cold_weight,
            forgetting_factor,
        )
    except ValueError as exc:
        raise ValueError(f"cold start {cold_path} vs warm start {warm_start}: {exc}") from exc
    return WarmStart(prior, prev_schema, prev_config, str(Path(cold_path).resolve()))
