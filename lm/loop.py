"""The optimisation loop both LLM trainers share (explore.sft, alignment.train): AdamW with a linear
warm-up and cosine decay, shuffled epochs of mini-batches, gradient clipping, a progress bar, and the
fit's result. The trainers inject what differs: the epoch order and the loss of a batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lm.lora import LoraSettings
from lm.presets import TinyLMConfig
from lm.schedule import warmup_cosine


def check_trainer_config(cfg) -> None:
    """The fields every LLM trainer config shares (tiny, lora, epochs, max_steps, batch_size, lr,
    warmup_fraction), for a frozen dataclass's __post_init__: the nested dicts of a saved config become
    dataclasses again, and each value is checked, the error naming the config class, field and value."""
    name = type(cfg).__name__
    if isinstance(cfg.tiny, dict):  # from_dict of a saved config
        object.__setattr__(cfg, "tiny", TinyLMConfig(**cfg.tiny))
    if isinstance(cfg.lora, dict):
        object.__setattr__(cfg, "lora", LoraSettings.from_dict(cfg.lora))
    if not isinstance(cfg.lora, LoraSettings):
        raise ValueError(f"{name}.lora={cfg.lora!r}: give an lm.lora.LoraSettings (or its dict).")
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise ValueError(f"{name}: epochs={cfg.epochs}, max_steps={cfg.max_steps}; set one of them > 0.")
    if cfg.batch_size < 1:
        raise ValueError(f"{name}.batch_size={cfg.batch_size}: must be >= 1.")
    if cfg.lr < 0:
        raise ValueError(f"{name}.lr={cfg.lr}: must be >= 0 (0 picks the default).")
    if not 0 <= cfg.warmup_fraction < 1:
        raise ValueError(f"{name}.warmup_fraction={cfg.warmup_fraction}: must be in [0, 1).")


@dataclass(frozen=True)
class FitResult:
    """What a fit did: optimizer steps, examples seen over all epochs, the last batch's loss, wall time."""

    steps: int
    examples_seen: int  # examples processed over all epochs (rows x epochs), not the dataset size
    final_loss: float  # the loss of the last step's batch
    train_s: float
    tokens: int = 0  # input tokens processed (attention-mask ones), where the loss counts them

    @property
    def examples_per_s(self) -> float | None:
        return round(self.examples_seen / self.train_s, 1) if self.train_s else None

    @property
    def tokens_per_s(self) -> float | None:
        return round(self.tokens / self.train_s, 1) if self.train_s else None


def total_steps(n_items: int, batch_size: int, epochs: float, max_steps: int) -> int:
    """max_steps when set, else round(epochs x batches per epoch), at least 1."""
    return max_steps or max(1, round(epochs * math.ceil(n_items / batch_size)))


def adamw_warmup_cosine(groups: list[dict], *, weight_decay: float, total: int, warmup_fraction: float):
    """(AdamW over the parameter groups, each {"params", "lr"}; its LambdaLR: linear warm-up over
    max(1, int(warmup_fraction x total)) steps, then cosine decay to 10% at `total`)."""
    import torch

    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    warmup = max(1, int(warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    return opt, sched


def fit_steps(
    params: list,
    opt,
    sched,
    *,
    total: int,
    batch_size: int,
    epoch_order: Callable[[], Sequence[int]],
    batch_loss: Callable[[Sequence[int]], tuple],
    grad_clip: float,
    desc: str,
    progress: bool = True,
) -> FitResult:
    """Run `total` optimizer steps over epochs of mini-batches.

    epoch_order() is called at the start of each epoch (only when a step is left) and returns the item
    indices of that epoch in order; a batch is the next `batch_size` of them. batch_loss(idx) returns
    (loss tensor, tokens in the batch). Each step: zero_grad, backward, clip the norm of `params` to
    grad_clip, optimizer and scheduler step.
    """
    import torch
    from tqdm import tqdm

    t0, step, seen, tokens, last = time.perf_counter(), 0, 0, 0, float("nan")
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="step")
    while step < total:
        order = epoch_order()
        for s in range(0, len(order), batch_size):
            if step >= total:
                break
            idx = order[s : s + batch_size]
            loss, n_tokens = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            step += 1
            seen += len(idx)
            tokens += n_tokens
            last = loss.item()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    return FitResult(step, seen, last, time.perf_counter() - t0, tokens)
