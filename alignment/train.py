"""Training the alignment LLM on aggregated feedback.

pointwise (the papers' choice): cross-entropy of sigmoid(s(h, c)) against the aggregated label y in [0, 1]
    L = -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))]
pairwise (Bradley-Terry, for comparison): for two candidates of one key with y_a - y_b >= min_gap
    L = -log sigmoid(s(h, a) - s(h, b))
pointwise + pairwise_weight > 0: the pointwise loss plus pairwise_weight x the Bradley-Terry loss of as
many preferences, drawn at random from the fitted pairs' ones, per step (an auxiliary ranking loss)

residual training (prior "candidate"; default "none"): s(h, c) includes the logit of the candidate's global
positive rate on the training pairs, shrunk towards the overall mean by prior_strength impressions
(alignment.prior; "key_offset" adds the key's fitted offset); the model starts at that baseline and the LM
learns the correction. Early stopping (valid_fraction > 0; default off): valid_fraction of
the training pairs (an independent hash) is kept out of the gradient steps; every eval_every steps the
validation loss (pointwise: logloss; pairwise: 1 - AUC) is measured, training stops after `patience`
validations without a better one, and the best step's weights are restored.

`AlignmentTrainer` has the steps of ranking.train.Trainer's shape: split (alignment.pairs: training and
held-out pairs by a hash of (key, candidate), a validation part inside the former) -> build (backbone,
LoRA, head; the prior from the training pairs) -> fit (the loop, lm.loop, in chunks with validation
between them) -> evaluate (alignment.evaluate: AUC and logloss on the held-out pairs against the
global-positive-rate, key-offset, history-cluster-rate and novelty-sample-frequency baselines) -> save;
`train_alignment` runs them in that order.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from alignment.evaluate import heldout_evaluation, logloss, platt, sigmoid
from alignment.info import INFO_FILE, AlignmentModelInfo, read_alignment_info
from alignment.pairs import PairSet, PairSplit, heldout_mask, split_pairs
from alignment.prior import PRIORS, AlignmentPrior
from catalog.io import replace_folder, staging_folder
from catalog.metrics import auc
from catalog.outputs import check_output_folder
from catalog.vocabulary import ClusterVocabulary
from lm.info import config_kwargs
from lm.loop import FitResult, adamw_warmup_cosine, check_trainer_config, fit_steps, total_steps
from lm.lora import LoraSettings, apply_lora
from lm.presets import PRESETS, TinyLMConfig

__all__ = [
    "AlignmentConfig", "AlignmentTrainer", "check_alignment_base", "check_alignment_out", "heldout_mask", "train_alignment",
]  # fmt: skip


OBJECTIVES = ("pointwise", "pairwise")
METHODS = ("auto", "full", "lora")


@dataclass(frozen=True)
class AlignmentConfig:
    base: str = "tiny"  # tiny, smollm2-135m, or a causal-LM folder (a trained novelty model works well)
    method: str = "auto"  # auto: full training for tiny, LoRA for any other base
    objective: str = "pointwise"  # pointwise (cross-entropy vs the label) or pairwise (Bradley-Terry)
    epochs: float = 3.0
    max_steps: int = 0  # stop after this many optimizer steps (0: epochs decide)
    batch_size: int = 64  # pairs (pointwise) or preferences (pairwise) per step
    items_per_key: int = 0  # a batch takes a key's items in runs of this many, its history text run once
    # per run (0: 4 for pointwise; 1 for pairwise, whose preference pairs of one key are many and alike)
    lr: float = 0.0  # 0: 3e-3 tiny, 1e-3 full warm start, 2e-4 LoRA; the head gets at least 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)  # adapters for pretrained bases
    eval_fraction: float = 0.2  # share of pairs held out, by a hash of (key, candidate)
    # the fixed logit the LM corrects (alignment.prior): none (the LM learns the whole logit), candidate
    # (the smoothed global positive rate), key_offset (plus the key's fitted offset). Not the default: on a
    # world whose signal is an interaction the candidate prior kept the LM on its plateau (tests/README)
    prior: str = "none"
    prior_strength: float = 100.0  # pseudo-impressions shrinking each candidate's rate towards the mean
    # share of the training pairs kept for early stopping (0: none, the last step is kept)
    valid_fraction: float = 0.0
    eval_every: int = 0  # validate every N steps (0: total steps / 15, at least 10)
    patience: int = 4  # validations without improvement before training stops (0: never stops early)
    pairwise_weight: float = 0.0  # pointwise only: weight of an auxiliary Bradley-Terry loss (0: none)
    device: str = "auto"  # auto: CUDA when present
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    seed: int = 0
    # a previous alignment model folder: training starts from its backbone and head (the loop's retraining
    # on all feedback so far); its base is used, `base` is ignored. LoRA: new adapters on the merged
    # backbone, merged again at the end (the folder then holds full weights)
    warm_start: str | None = None

    def __post_init__(self):
        check_trainer_config(self)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"AlignmentConfig.objective={self.objective!r}: use one of {OBJECTIVES}.")
        if self.method not in METHODS:
            raise ValueError(f"AlignmentConfig.method={self.method!r}: use one of {METHODS}.")
        if self.method == "lora" and self.base == "tiny":
            raise ValueError(
                "AlignmentConfig: method='lora' needs a pretrained base; tiny is trained in full."
            )
        if self.items_per_key < 0:
            raise ValueError(f"AlignmentConfig.items_per_key={self.items_per_key}: must be >= 0.")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"AlignmentConfig.eval_fraction={self.eval_fraction}: must be in (0, 1).")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(
                f"AlignmentConfig.valid_fraction={self.valid_fraction}: must be in [0, 1) (0: no early stopping)."
            )
        for name in ("eval_every", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"AlignmentConfig.{name}={getattr(self, name)}: must be >= 0.")
        if self.prior not in PRIORS:
            raise ValueError(f"AlignmentConfig.prior={self.prior!r}: use one of {PRIORS}.")
        if self.prior_strength < 0:
            raise ValueError(
                f"AlignmentConfig.prior_strength={self.prior_strength}: must be >= 0 impressions."
            )
        if self.pairwise_weight < 0:
            raise ValueError(f"AlignmentConfig.pairwise_weight={self.pairwise_weight}: must be >= 0.")
        if self.pairwise_weight and self.objective != "pointwise":
            raise ValueError(
                f"AlignmentConfig.pairwise_weight={self.pairwise_weight} is an auxiliary loss of the pointwise "
                "objective; with objective='pairwise' leave it at 0."
            )

    @classmethod
    def from_dict(cls, d: dict) -> AlignmentConfig:
        """A config saved with asdict (alignment.json's config); an unknown key is a ValueError."""
        return cls(**config_kwargs(cls, d))

    @property
    def resolved_method(self) -> str:
        if self.method != "auto":
            return self.method
        return "full" if self.base == "tiny" else "lora"

    def learning_rate_for(self, method: str) -> float:
        if self.lr:
            return self.lr
        if method == "lora":
            return 2e-4
        fresh = self.base == "tiny" and not self.warm_start
        return 3e-3 if fresh else 1e-3  # from scratch vs a warm start from trained weights

    @property
    def learning_rate(self) -> float:
        return self.learning_rate_for(self.resolved_method)


def _key_grouped_order(keys: list[tuple[int, ...]], per_key: int, g) -> np.ndarray:
    """A permutation of the items in runs of up to `per_key` items of one key (runs in random order), so
    a batch's items share history prefixes, computed once each, while a batch still mixes many keys."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for i in torch.randperm(len(keys), generator=g).tolist():
        groups.setdefault(keys[i], []).append(i)
    runs = [group[s : s + per_key] for group in groups.values() for s in range(0, len(group), per_key)]
    return np.array(
        [i for r in torch.randperm(len(runs), generator=g).tolist() for i in runs[r]], dtype=np.int64
    )


def _shared_logits(model, encoder, keys: list[tuple[int, ...]], candidates: np.ndarray, device):
    """Training forward: each distinct key's prefix once (AlignmentModel.forward_shared)."""
    import torch

    distinct = list(dict.fromkeys(keys))
    slot = {k: j for j, k in enumerate(distinct)}
    prefix_ids, prefix_mask = encoder.collate([encoder.key_ids(k) for k in distinct], device)
    rows = torch.tensor([slot[k] for k in keys], device=device)
    suffix = encoder.collate([encoder.candidate_ids(int(c)) for c in candidates], device)
    return model.forward_shared(
        prefix_ids, prefix_mask, rows, *suffix, model.offsets(keys, candidates, device)
    )


class _EpochCursor:
    """Epoch orders for lm.loop.fit_steps when a fit runs in chunks (validation between them): each call
    returns the rest of the current epoch's order, so the chunks walk through whole epochs; `advance`
    counts the items a batch consumed."""

    def __init__(self, new_order):
        self.new_order, self.order, self.pos = new_order, np.empty(0, np.int64), 0

    def __call__(self) -> np.ndarray:
        if self.pos >= len(self.order):
            self.order, self.pos = self.new_order(), 0
        return self.order[self.pos :]

    def advance(self, n: int) -> None:
        self.pos += n


def check_alignment_base(base: str) -> None:
    """Fail fast on a base folder that is not a whole causal LM (a ValueError naming the folder or the
    truncated weights file), before anything is read or written; presets need no check."""
    if base not in PRESETS:
        from lm.presets import resolve_base

        resolve_base(base)


def check_alignment_out(out: str | os.PathLike) -> Path:
    """`out` if an alignment model may be swapped in there: new, empty, or an earlier alignment model."""
    return check_output_folder(
        out, (INFO_FILE,), job="alignment.train_alignment", what="alignment model", flag="out"
    )


class AlignmentTrainer:
    """Trains one alignment model: split -> build -> fit -> evaluate -> save (train_alignment runs them).

    Args:
        vocab: the catalog's clusters (the pair text names and describes them).
        config: AlignmentConfig.  progress: show a progress bar while fitting.
    """

    def __init__(self, vocab: ClusterVocabulary, config: AlignmentConfig, *, progress: bool = True):
        self.vocab, self.config, self.progress = vocab, config, progress
        self.base, self.method = config.base, config.resolved_method
        self.warm: AlignmentModelInfo | None = None
        if config.warm_start:
            self.warm = read_alignment_info(config.warm_start)
            if self.warm.vocab.signature() != vocab.signature():
                raise ValueError(
                    f"warm_start={config.warm_start!r} was trained on other clusters than this catalog's; "
                    "warm-start from an alignment model of this catalog, or train one from --base."
                )
            self.base = self.warm.base
            self.method = "full" if self.warm.method == "full" or config.method == "full" else "lora"
        self.model = self.encoder = self.tokenizer = self.device = None
        self.validation: list[tuple[int, float]] = []  # (step, validation loss) of the last fit
        self.best_step = 0

    def split(self, pairs: pa.Table, preferences: pa.Table) -> PairSplit:
        """Training and held-out pairs (a stable hash of (key, candidate)), preferences among the former."""
        config = self.config
        return split_pairs(
            pairs,
            preferences,
            eval_fraction=config.eval_fraction,
            seed=config.seed,
            objective=config.objective,
            valid_fraction=config.valid_fraction,
        )

    def build(self, train: PairSet | None = None) -> None:
        """The backbone (LoRA adapters on a pretrained one), the linear head, the pair encoder, the device;
        with a config.prior, the prior fitted on the `train` pairs (needed then; train_alignment passes the
        fitted pairs, so early stopping validates on pairs the prior has not seen either)."""
        import torch

        from alignment.model import AlignmentModel, PairEncoder, build_backbone
        from catalog.device import pick_device

        config = self.config
        torch.manual_seed(config.seed)
        if self.warm is not None:  # the previous model's backbone (adapters merged) and head
            from alignment.model import load_alignment

            model, encoder, _ = load_alignment(config.warm_start, device="cpu")
            backbone, head, self.tokenizer = model.backbone, model.head, encoder.tokenizer
        else:
            backbone, self.tokenizer, _ = build_backbone(config.base, self.vocab, config.tiny)
            head = None
        if self.method == "lora":
            backbone = apply_lora(backbone, self.base, config.lora, task_type="FEATURE_EXTRACTION")
        self.device = pick_device(config.device)
        self.model = AlignmentModel(backbone, backbone.config.hidden_size)
        if head is not None:
            self.model.head.load_state_dict(head.state_dict())
        if config.prior != "none":
            if train is None:
                raise ValueError(
                    f"AlignmentTrainer.build: prior={config.prior!r} is fitted on the training pairs; call "
                    "build(split.train)."
                )
            self.model.prior = AlignmentPrior.fit(train, self.vocab.size, config.prior, config.prior_strength)
        self.model.to(self.device)
        self.encoder = PairEncoder(self.tokenizer, self.vocab)

    @property
    def trainable(self) -> list:
        """Backbone parameters that train (all, or LoRA's), then the head's."""
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return body + list(self.model.head.parameters())

    def _batch_loss(self, split: PairSplit, idx) -> tuple:
        import torch
        import torch.nn.functional as F

        if self.config.objective == "pointwise":
            fit = split.fit
            logits = _shared_logits(
                self.model, self.encoder, [fit.keys[i] for i in idx], fit.candidates[idx], self.device
            )
            target = torch.tensor(fit.labels[idx], dtype=torch.float32, device=self.device)
            loss = F.binary_cross_entropy_with_logits(logits, target)
            if self.config.pairwise_weight and len(split.pref_keys):
                drawn = torch.randint(len(split.pref_keys), (len(idx),), generator=self._aux_gen).numpy()
                loss = loss + self.config.pairwise_weight * self._bradley_terry(split, drawn)
            return loss, 0
        return self._bradley_terry(split, idx), 0

    def _bradley_terry(self, split: PairSplit, idx):
        import torch.nn.functional as F

        both = np.concatenate([split.pref_a[idx], split.pref_b[idx]])
        keys = [split.pref_keys[i] for i in idx] * 2
        s_ab = _shared_logits(self.model, self.encoder, keys, both, self.device)  # (2B,)
        return -F.logsigmoid(s_ab[: len(idx)] - s_ab[len(idx) :]).mean()

    def validation_loss(self, valid: PairSet) -> float:
        """What early stopping minimises on the validation pairs: logloss (pointwise), 1 - AUC against
        label > the median (pairwise: its scores have no level)."""
        s = self.logits(valid)
        self.model.train()
        if self.config.objective == "pointwise":
            return logloss(valid.labels, sigmoid(s))
        y = valid.labels > np.median(valid.labels)
        a = auc(y, s)
        return 1.0 - (0.5 if np.isnan(a) else a)

    def fit(self, split: PairSplit) -> FitResult:
        """AdamW (the head at >= 1e-3) with warm-up and cosine decay, over epochs of the fitted pairs
        (pointwise) or preferences (pairwise) in runs of one key's items (items_per_key). With a validation
        part: chunks of eval_every steps, the validation loss after each, stop after `patience` without a
        better one, and restore the best step's trainable weights (self.validation has the curve)."""
        import torch
        from tqdm import tqdm

        config, model = self.config, self.model
        pointwise = config.objective == "pointwise"
        item_keys = split.fit.keys if pointwise else split.pref_keys
        per_key = config.items_per_key or (4 if pointwise else 1)
        total = total_steps(len(item_keys), config.batch_size, config.epochs, config.max_steps)
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [
            {"params": body, "lr": config.learning_rate_for(self.method)},
            {"params": list(model.head.parameters()), "lr": max(config.learning_rate_for(self.method), 1e-3)},
        ]
        opt, sched = adamw_warmup_cosine(
            groups, weight_decay=config.weight_decay, total=total, warmup_fraction=config.warmup_fraction
        )
        g = torch.Generator().manual_seed(config.seed)
        self._aux_gen = torch.Generator().manual_seed(config.seed + 1)
        desc = f"alignment {'warm ' if self.warm else ''}{self.base} ({self.method}, {config.objective})"
        model.train()
        self.validation, self.best_step = [], total
        if split.valid is None:  # one run of every step, the last one kept
            return fit_steps(
                self.trainable, opt, sched, total=total, batch_size=config.batch_size,
                epoch_order=lambda: _key_grouped_order(item_keys, per_key, g),
                batch_loss=lambda idx: self._batch_loss(split, idx), grad_clip=config.grad_clip,
                desc=desc, progress=self.progress,
            )  # fmt: skip
        cursor = _EpochCursor(lambda: _key_grouped_order(item_keys, per_key, g))

        def batch_loss(idx):
            cursor.advance(len(idx))
            return self._batch_loss(split, idx)

        every = min(total, config.eval_every or max(10, total // 15))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        best_loss = self.validation_loss(split.valid)
        best_step, best_state, waited = 0, {n: p.detach().clone() for n, p in named}, 0
        self.validation.append((0, round(best_loss, 5)))
        bar = tqdm(total=total, desc=desc, disable=not self.progress, unit="step")
        steps = seen = 0
        train_s, last = 0.0, float("nan")
        while steps < total:
            chunk = fit_steps(
                self.trainable, opt, sched, total=min(every, total - steps), batch_size=config.batch_size,
                epoch_order=cursor, batch_loss=batch_loss, grad_clip=config.grad_clip, desc=desc,
                progress=False,
            )  # fmt: skip
            steps, seen, train_s = steps + chunk.steps, seen + chunk.examples_seen, train_s + chunk.train_s
            last = chunk.final_loss
            bar.update(chunk.steps)
            loss = self.validation_loss(split.valid)
            self.validation.append((steps, round(loss, 5)))
            bar.set_postfix(loss=f"{last:.3f}", valid=f"{loss:.4f}")
            if loss < best_loss - 1e-5:
                best_loss, best_step, waited = loss, steps, 0
                best_state = {n: p.detach().clone() for n, p in named}
            else:
                waited += 1
                if config.patience and waited >= config.patience:
                    break
        bar.close()
        with torch.no_grad():  # the best validated step's weights
            for n, p in named:
                p.copy_(best_state[n])
        self.best_step = best_step
        return FitResult(steps, seen, last, train_s)

    def logits(self, pairs: PairSet, limit: int | None = None) -> np.ndarray:
        """The model's logits of the first `limit` (default all) pairs, in eval mode."""
        from alignment.score import score_logits

        n = len(pairs) if limit is None else min(len(pairs), limit)
        self.model.eval()
        return score_logits(
            self.model, self.encoder, pairs.keys[:n], pairs.candidates[:n], batch_size=256, device=self.device
        )

    def heldout_loss(self, evals: PairSet) -> float:
        """Logloss of sigmoid(s) against the held-out soft labels (the pointwise objective)."""
        loss = logloss(evals.labels, sigmoid(self.logits(evals)))
        self.model.train()
        return loss

    def evaluate(self, split: PairSplit, candidates: pa.Table | None) -> tuple[float, dict]:
        """(held-out logloss, the report's "evaluation": model and baselines, alignment.evaluate)."""
        eval_logits = self.logits(split.evals)
        if self.config.objective == "pairwise":  # Bradley-Terry fixes score differences only: calibrate
            train_logits = self.logits(split.fit, limit=2000)
            a, b = platt(train_logits.astype(np.float64), split.fit.labels[: len(train_logits)])
            probs = sigmoid(eval_logits, a, b)
        else:
            probs = sigmoid(eval_logits)
        loss = logloss(split.evals.labels, sigmoid(eval_logits))
        return loss, heldout_evaluation(split.train, split.evals, probs, self.vocab.size, candidates)

    def saved_method(self) -> str:
        """How the saved folder holds the backbone: adapters over the base (lora), or full weights (a
        warm start's adapters are merged into the previous model's weights, which no base reproduces)."""
        return "full" if self.warm is not None else self.method

    def info(self, report: dict) -> AlignmentModelInfo:
        config, base = self.config, self.base
        method = self.saved_method()
        return AlignmentModelInfo(
            base=base if base in PRESETS else str(Path(base).resolve()),
            method=method, vocab=self.vocab, config=asdict(config),
            lora=config.lora if method == "lora" else None, report=report,
        )  # fmt: skip

    def save(self, out: str | os.PathLike, report: dict) -> None:
        """Write the folder beside `out` and swap it in (a crash never leaves half a model)."""
        from alignment.model import save_alignment

        out = check_alignment_out(out)  # again: the folder may have been filled while the model trained
        if self.warm is not None and self.method == "lora":
            self.model.backbone = self.model.backbone.merge_and_unload()
        tmp = staging_folder(out)
        try:
            save_alignment(tmp, self.model, self.tokenizer, self.info(report))
            replace_folder(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def train_alignment(
    vocab: ClusterVocabulary,
    pairs: pa.Table,
    preferences: pa.Table,
    out: str | os.PathLike,
    config: AlignmentConfig | None = None,
    *,
    candidates: pa.Table | None = None,
    progress: bool = True,
) -> dict:
    """Train on FEEDBACK_PAIRS (pointwise) or FEEDBACK_PREFERENCES (pairwise), evaluate on held-out pairs,
    save the model folder at `out`; returns the report (also in alignment.json).

    `candidates` (NOVELTY_CANDIDATES of the same keys) enables the novelty-frequency baseline. An `out`
    that holds files but no alignment model is refused before training (ValueError): the swap would
    delete them.
    """
    check_alignment_out(out)
    config = config or AlignmentConfig()
    if config.warm_start:
        if Path(config.warm_start).resolve() == Path(out).resolve():
            raise ValueError(
                f"warm_start={config.warm_start!r} is the output folder; write the retrained model elsewhere "
                "(the swap would replace the model it starts from while it is read)."
            )
    else:
        check_alignment_base(config.base)
    t_start = time.perf_counter()
    trainer = AlignmentTrainer(vocab, config, progress=progress)
    split = trainer.split(pairs, preferences)
    trainer.build(split.fit)  # the prior from the fitted pairs only: the validation pairs stay unseen
    loss_before = trainer.heldout_loss(split.evals)
    fit = trainer.fit(split)
    loss_after, evaluation = trainer.evaluate(split, candidates)
    report = {
        "base": trainer.base,
        "method": trainer.method,
        "warm_start": config.warm_start,
        "objective": config.objective,
        "pairs": len(split.data),
        "train_pairs": len(split.fit),
        "valid_pairs": 0 if split.valid is None else len(split.valid),
        "preferences": len(split.pref_keys),
        "prior": config.prior,
        "pairwise_weight": config.pairwise_weight,
        "heldout_loss_before": round(loss_before, 4),
        "heldout_loss_after": round(loss_after, 4),
        "evaluation": evaluation,
        "final_train_loss": round(fit.final_loss, 4),
        "steps": fit.steps,
        "best_step": trainer.best_step,
        "validation": trainer.validation,
        "examples_seen": fit.examples_seen,
        "train_s": round(fit.train_s, 2),
        "examples_per_s": fit.examples_per_s,
        "trainable_params": sum(p.numel() for p in trainer.trainable),
        "device": str(trainer.device),
        "total_s": round(time.perf_counter() - t_start, 2),
        "out": str(out),
    }
    trainer.save(out, report)
    return report
