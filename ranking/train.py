"""The LiRank training recipe: Adam on dense parameters, Adagrad on id embeddings, learning-rate
warm-up over a fraction of the steps, gradient clipping, and, for incremental training, the
Fisher-weighted prior of ranking.incremental added to the loss."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ranking.config import check_dict, check_field_types
from ranking.data import ExampleStream
from ranking.features import Batch
from ranking.model import LiRankModel

if TYPE_CHECKING:  # ranking.incremental imports this module (task_loss)
    from ranking.incremental import IncrementalPrior


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2  # passes over the training examples
    batch_size: int = 512  # examples per step
    lr: float = 2e-3  # Adam learning rate, dense parameters
    sparse_lr: float = 0.05  # Adagrad learning rate, id embedding tables
    warmup_fraction: float = 0.5  # linear warm-up over this share of all steps (paper: 50%)
    clip_norm: float = 1.0  # global gradient-norm clip; 0 turns it off
    task_weights: tuple[float, ...] = ()  # loss weight per task; () weighs every task 1
    forgetting_factor: float = 0.0  # lambda_f: strength of the incremental-training prior (0 = off)
    cold_weight: float = 0.5  # alpha: share of the cold-start model w0 in the prior and the initialisation
    fisher_batches: int = 32  # batches used to estimate the diagonal empirical Fisher after training
    seed: int = 0

    def __post_init__(self):
        def bad(name, fix):
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {fix}")

        check_field_types(self)

        for name in ("epochs", "batch_size", "fisher_batches"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1.")
        for name in ("lr", "sparse_lr"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0.")
        if not 0 <= self.warmup_fraction <= 1:
            bad("warmup_fraction", "must be in [0, 1].")
        if not 0 <= self.cold_weight <= 1:
            bad("cold_weight", "must be in [0, 1].")
        if self.forgetting_factor < 0 or self.clip_norm < 0:
            bad("forgetting_factor" if self.forgetting_factor < 0 else "clip_norm", "must be >= 0.")
        object.__setattr__(self, "task_weights", tuple(self.task_weights))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        check_dict("TrainConfig", d)
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(
                f"TrainConfig: unknown field(s) {sorted(set(d) - known)}; known: {sorted(known)}."
            )
        return cls(**d)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean binary cross-entropy per task, weighted and summed over tasks. logits, labels (B, T)."""
    per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)  # (T,)
    return (per_task * weights).sum() if weights is not None else per_task.sum()


@dataclass
class TrainResult:
    steps: int
    examples_seen: int  # examples processed over all epochs (rows x epochs), not the dataset size
    seconds: float
    final_loss: float
    losses: list[float]

    @property
    def examples_per_s(self) -> float:
        return self.examples_seen / max(self.seconds, 1e-9)


class Trainer:
    """Trains a LiRankModel on an ExampleStream with the paper's recipe.

    Args:
        model: the ranker (moved to `device`).  config: TrainConfig.
        prior: an IncrementalPrior for incremental training, else None.
    """

    def __init__(
        self,
        model: LiRankModel,
        config: TrainConfig,
        device: torch.device,
        prior: IncrementalPrior | None = None,
    ):
        self.model = model.to(device)
        self.config, self.device = config, device
        self.prior = prior.to(device) if prior is not None else None
        if prior is not None:  # start from alpha w0 + (1 - alpha) w_prev
            model.load_state_dict({**model.state_dict(), **prior.initial_state()}, strict=True)
        sparse_ids = {id(t.weight) for t in model.embedding_tables()}
        sparse = [p for p in model.parameters() if id(p) in sparse_ids]
        dense = [p for p in model.parameters() if id(p) not in sparse_ids]
        self.dense_opt = torch.optim.Adam(dense, lr=config.lr)
        self.sparse_opt = torch.optim.Adagrad(sparse, lr=config.sparse_lr)
        self.step_count = 0
        self._task_weights: torch.Tensor | None = None
        self._schedulers: list = []  # set by warm_up; without it the learning rates stay constant

    def warm_up(self, total_steps: int) -> None:
        """Linear learning-rate warm-up: lr_t = lr min(1, (t + 1) / ceil(warmup_fraction total_steps))."""
        warmup = max(1, math.ceil(self.config.warmup_fraction * total_steps))
        scale = lambda step: min(1.0, (step + 1) / warmup)  # noqa: E731
        self._schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opt, scale) for opt in (self.dense_opt, self.sparse_opt)
        ]

    def step(self, batch: Batch) -> float:
        """One training step on `batch` (on the device): weighted task loss plus the incremental prior,
        backward, gradient clipping, Adam and Adagrad steps, warm-up step. Returns the loss."""
        cfg = self.config
        self.model.train()
        if self._task_weights is None and cfg.task_weights:
            n_tasks = batch.labels.shape[1]
            if len(cfg.task_weights) != n_tasks:
                raise ValueError(
                    f"TrainConfig.task_weights has {len(cfg.task_weights)} values for {n_tasks} tasks."
                )
            self._task_weights = torch.tensor(cfg.task_weights, dtype=torch.float32, device=self.device)
        out = self.model.run(batch)
        loss = task_loss(out.logits, batch.labels, self._task_weights)
        if self.prior is not None and self.prior.lam > 0:
            loss = loss + self.prior.penalty(self.model)
        self.dense_opt.zero_grad(set_to_none=True)
        self.sparse_opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        self.dense_opt.step()
        self.sparse_opt.step()
        for sched in self._schedulers:
            sched.step()
        self.step_count += 1
        return float(loss.detach())

    def fit(self, stream: ExampleStream, progress=None) -> TrainResult:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.warm_up(cfg.epochs * len(stream))
        losses, examples, t0 = [], 0, time.perf_counter()
        for _ in range(cfg.epochs):
            for batch in stream:
                batch = batch.to(self.device)
                losses.append(self.step(batch))
                examples += len(batch)
                if progress is not None:
                    progress(len(batch), losses[-1])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        tail = losses[-max(1, len(losses) // 10) :]
        return TrainResult(
            self.step_count, examples, seconds, float(np.mean(tail)) if tail else float("nan"), losses
        )


@torch.no_grad()
def predict(
    model: LiRankModel, stream: ExampleStream, device: torch.device, *, keep_phi: bool = False
) -> dict:
    """Calibrated probabilities (N, T), raw-logit probabilities, labels when present, optionally phi."""
    model.eval()
    probs, raw, labels, phis = [], [], [], []
    for batch in stream:
        batch = batch.to(device)
        out = model.run(batch)
        probs.append(torch.sigmoid(out.logits).cpu())
        raw.append(torch.sigmoid(out.raw_logits).cpu())
        if batch.labels is not None:
            labels.append(batch.labels.cpu())
        if keep_phi:
            phis.append(out.phi.cpu())
    if not probs:
        raise ValueError("predict: the stream yielded no rows; evaluate on a non-empty test part.")
    result = {"probs": torch.cat(probs).numpy(), "raw_probs": torch.cat(raw).numpy()}
    if labels:
        result["labels"] = torch.cat(labels).numpy()
    if keep_phi:
        result["phi"] = torch.cat(phis).numpy()
    return result
