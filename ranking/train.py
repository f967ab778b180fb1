"""The LiRank training recipe: Adam on dense parameters, Adagrad on id embeddings, learning-rate
warm-up over a fraction of the steps, gradient clipping, and, for incremental training, the
Fisher-weighted prior of ranking.incremental added to the loss."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
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
    epochs: int = 2  # passes over the training examples; the most, when a validation part stops early
    batch_size: int = 512  # examples per step
    lr: float = 2e-3  # Adam learning rate, dense parameters
    sparse_lr: float = 0.05  # learning rate of the id embedding tables' optimizer
    sparse_optimizer: str = "adagrad"  # 'adagrad' (LiRank) or 'adam' for the id embedding tables
    # linear warm-up over this share of the *planned* budget, planned_epochs passes (paper: 50% of the
    # steps). It does not grow with `epochs`: a longer budget for early stopping keeps the same warm-up.
    warmup_fraction: float = 0.5
    planned_epochs: int = 2
    embedding_l2: float = 0.0  # L2 (weight decay) on the id embedding tables
    patience: int = 2  # with a validation part: stop after this many epochs without a better loss
    min_delta: float = 1e-4  # a validation loss must drop by more than this to count as better
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

        for name in ("epochs", "batch_size", "fisher_batches", "planned_epochs", "patience"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1.")
        for name in ("lr", "sparse_lr"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0.")
        if not 0 <= self.warmup_fraction <= 1:
            bad("warmup_fraction", "must be in [0, 1].")
        if self.sparse_optimizer not in ("adagrad", "adam"):
            bad("sparse_optimizer", "use 'adagrad' or 'adam'.")
        if self.embedding_l2 < 0 or self.min_delta < 0:
            bad("embedding_l2" if self.embedding_l2 < 0 else "min_delta", "must be >= 0.")
        if not 0 <= self.cold_weight <= 1:
            bad("cold_weight", "must be in [0, 1].")
        if self.forgetting_factor < 0 or self.clip_norm < 0:
            bad("forgetting_factor" if self.forgetting_factor < 0 else "clip_norm", "must be >= 0.")
        object.__setattr__(self, "task_weights", tuple(self.task_weights))

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)

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
    # with a validation part: per-epoch {'epoch', 'loss' (mean task logloss), 'auc' (per task)}, the
    # epoch whose weights were kept (1-based), and whether training stopped before `epochs`
    validation: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

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
        sparse_cls = torch.optim.Adagrad if config.sparse_optimizer == "adagrad" else torch.optim.Adam
        self.sparse_opt = sparse_cls(sparse, lr=config.sparse_lr, weight_decay=config.embedding_l2)
        self.step_count = 0
        self._task_weights: torch.Tensor | None = None
        self._schedulers: list = []  # set by warm_up; without it the learning rates stay constant

    def warm_up(self, total_steps: int) -> None:
        """Linear learning-rate warm-up: lr_t = lr min(1, (t + 1) / ceil(warmup_fraction total_steps)),
        total_steps being the planned budget (fit passes planned_epochs x steps per epoch)."""
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

    def fit(
        self, stream: ExampleStream, progress=None, *, valid: ExampleStream | None = None, on_epoch=None
    ) -> TrainResult:
        """Train up to `epochs` passes. With `valid`, each epoch ends with the mean task logloss on it;
        training stops after `patience` epochs without a better one and the best epoch's weights are
        restored. on_epoch(record) is called with each epoch's validation record."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.warm_up(cfg.planned_epochs * len(stream))
        losses, examples, t0 = [], 0, time.perf_counter()
        history, best, best_state, since = [], math.inf, None, 0
        for epoch in range(1, cfg.epochs + 1):
            for batch in stream:
                batch = batch.to(self.device)
                losses.append(self.step(batch))
                examples += len(batch)
                if progress is not None:
                    progress(len(batch), losses[-1])
            if valid is None:
                continue
            record = {"epoch": epoch, **validation_metrics(self.model, valid, self.device)}
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if record["loss"] < best - cfg.min_delta:
                best, since = record["loss"], 0
                best_state = copy.deepcopy(self.model.state_dict())
                record["best"] = True
            else:
                since += 1
                if since >= cfg.patience:
                    break
        stopped = valid is not None and len(history) < cfg.epochs
        if best_state is not None:
            self.model.load_state_dict(best_state)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        tail = losses[-max(1, len(losses) // 10) :]
        best_epoch = next((r["epoch"] for r in reversed(history) if r.get("best")), None)
        return TrainResult(
            self.step_count,
            examples,
            seconds,
            float(np.mean(tail)) if tail else float("nan"),
            losses,
            history,
            best_epoch,
            stopped,
        )


def validation_metrics(model, stream: ExampleStream, device: torch.device) -> dict:
    """{'loss': mean over tasks of the calibrated logloss, 'auc': {task: AUC}} on a validation stream."""
    from ranking.metrics import auc, logloss

    preds = predict(model, stream, device)
    y, p = preds["labels"], preds["probs"]
    tasks = range(y.shape[1])
    return {
        "loss": float(np.mean([logloss(y[:, i], p[:, i]) for i in tasks])),
        "auc": [float(auc(y[:, i], p[:, i])) for i in tasks],
    }


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
