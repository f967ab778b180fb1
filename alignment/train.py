"""Training the alignment LLM on aggregated feedback.

pointwise (the papers' choice): cross-entropy of sigmoid(s(h, c)) against the aggregated label y in [0, 1]
    L = -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))]
pairwise (Bradley-Terry, for comparison): for two candidates of one key with y_a - y_b >= min_gap
    L = -log sigmoid(s(h, a) - s(h, b))

`AlignmentTrainer` has the steps of ranking.train.Trainer's shape: split (alignment.pairs: training and
held-out pairs by a hash of (key, candidate)) -> build (backbone, LoRA, head) -> fit (the loop, lm.loop)
-> evaluate (alignment.evaluate: AUC and logloss on the held-out pairs against the global-positive-rate
and novelty-sample-frequency baselines) -> save; `train_alignment` runs them in that order.
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
from catalog.io import replace_folder, staging_folder
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
    return model.forward_shared(prefix_ids, prefix_mask, rows, *suffix)


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

    def split(self, pairs: pa.Table, preferences: pa.Table) -> PairSplit:
        """Training and held-out pairs (a stable hash of (key, candidate)), preferences among the former."""
        config = self.config
        return split_pairs(
            pairs,
            preferences,
            eval_fraction=config.eval_fraction,
            seed=config.seed,
            objective=config.objective,
        )

    def build(self) -> None:
        """The backbone (LoRA adapters on a pretrained one), the linear head, the pair encoder, the device."""
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
            train = split.train
            logits = _shared_logits(
                self.model, self.encoder, [train.keys[i] for i in idx], train.candidates[idx], self.device
            )
            target = torch.tensor(train.labels[idx], dtype=torch.float32, device=self.device)
            return F.binary_cross_entropy_with_logits(logits, target), 0
        both = np.concatenate([split.pref_a[idx], split.pref_b[idx]])
        keys = [split.pref_keys[i] for i in idx] * 2
        s_ab = _shared_logits(self.model, self.encoder, keys, both, self.device)  # (2B,)
        return -F.logsigmoid(s_ab[: len(idx)] - s_ab[len(idx) :]).mean(), 0

    def fit(self, split: PairSplit) -> FitResult:
        """AdamW (the head at >= 1e-3) with warm-up and cosine decay, over epochs of the training pairs
        (pointwise) or preferences (pairwise) in runs of one key's items (items_per_key)."""
        import torch

        config, model = self.config, self.model
        pointwise = config.objective == "pointwise"
        item_keys = split.train.keys if pointwise else split.pref_keys
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
        model.train()
        return fit_steps(
            self.trainable, opt, sched, total=total, batch_size=config.batch_size,
            epoch_order=lambda: _key_grouped_order(item_keys, per_key, g),
            batch_loss=lambda idx: self._batch_loss(split, idx), grad_clip=config.grad_clip,
            desc=f"alignment {'warm ' if self.warm else ''}{self.base} ({self.method}, {config.objective})",
            progress=self.progress,
        )  # fmt: skip

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
            train_logits = self.logits(split.train, limit=2000)
            a, b = platt(train_logits.astype(np.float64), split.train.labels[: len(train_logits)])
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
    trainer.build()
    loss_before = trainer.heldout_loss(split.evals)
    fit = trainer.fit(split)
    loss_after, evaluation = trainer.evaluate(split, candidates)
    report = {
        "base": trainer.base,
        "method": trainer.method,
        "warm_start": config.warm_start,
        "objective": config.objective,
        "pairs": len(split.data),
        "train_pairs": len(split.train),
        "preferences": len(split.pref_keys),
        "heldout_loss_before": round(loss_before, 4),
        "heldout_loss_after": round(loss_after, 4),
        "evaluation": evaluation,
        "final_train_loss": round(fit.final_loss, 4),
        "steps": fit.steps,
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
