"""Training the alignment LLM on aggregated feedback, and its evaluation against baselines.

pointwise (the papers' choice): cross-entropy of sigmoid(s(h, c)) against the aggregated label y in [0, 1]
    L = -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))]
pairwise (Bradley-Terry, for comparison): for two candidates of one key with y_a - y_b >= min_gap
    L = -log sigmoid(s(h, a) - s(h, b))

Pairs are split into training and held-out pairs by a hash of (key, candidate). On the held-out pairs
the report gives the AUC of the score against the label binarised at its median, and the logloss
against the soft label, for the model and two baselines: the candidate's global positive rate (its
impression-weighted mean label over the training pairs), and the novelty model's own sample frequency
for the key (the share of the key's samples that named the candidate, Platt-scaled on the training
pairs). A pairwise model's scores are Platt-scaled too before its logloss, since Bradley-Terry fixes
differences of scores, not their level.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.io import replace_folder, staging_folder
from catalog.metrics import auc, logloss
from catalog.outputs import check_output_folder
from catalog.vocabulary import ClusterVocabulary
from lm.lora import apply_lora
from lm.presets import PRESETS, TinyLMConfig
from lm.schedule import warmup_cosine

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
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    eval_fraction: float = 0.2  # share of pairs held out, by a hash of (key, candidate)
    device: str = "auto"  # auto: CUDA when present
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.tiny, dict):
            object.__setattr__(self, "tiny", TinyLMConfig(**self.tiny))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"AlignmentConfig.objective={self.objective!r}: use one of {OBJECTIVES}.")
        if self.method not in METHODS:
            raise ValueError(f"AlignmentConfig.method={self.method!r}: use one of {METHODS}.")
        if self.method == "lora" and self.base == "tiny":
            raise ValueError(
                "AlignmentConfig: method='lora' needs a pretrained base; tiny is trained in full."
            )
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(
                f"AlignmentConfig: epochs={self.epochs}, max_steps={self.max_steps}; set one > 0."
            )
        if self.batch_size < 1 or self.items_per_key < 0:
            raise ValueError(
                f"AlignmentConfig: batch_size={self.batch_size} must be >= 1, items_per_key={self.items_per_key} >= 0."
            )
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"AlignmentConfig.eval_fraction={self.eval_fraction}: must be in (0, 1).")
        if self.lr < 0:
            raise ValueError(f"AlignmentConfig.lr={self.lr}: must be >= 0 (0 picks the default).")

    @property
    def resolved_method(self) -> str:
        if self.method != "auto":
            return self.method
        return "full" if self.base == "tiny" else "lora"

    @property
    def learning_rate(self) -> float:
        if self.lr:
            return self.lr
        if self.resolved_method == "lora":
            return 2e-4
        return 3e-3 if self.base == "tiny" else 1e-3  # from scratch vs a warm start from trained weights


# ------------------------------------------------------------------------------------------
# data


@dataclass
class PairSet:
    """Pairs as parallel arrays: history keys, candidates, labels, impressions."""

    keys: list[tuple[int, ...]]
    candidates: np.ndarray
    labels: np.ndarray
    impressions: np.ndarray

    @classmethod
    def from_table(cls, pairs: pa.Table) -> PairSet:
        return cls(
            [tuple(k) for k in pairs["history_key"].to_pylist()],
            pairs["cluster_id"].to_numpy().astype(np.int64),
            pairs["label"].to_numpy().astype(np.float64),
            pairs["impressions"].to_numpy().astype(np.float64),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray) -> PairSet:
        return PairSet(
            [self.keys[i] for i in idx], self.candidates[idx], self.labels[idx], self.impressions[idx]
        )


def heldout_mask(
    keys: list[tuple[int, ...]], candidates: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """True for held-out pairs: a stable hash of (seed, key, candidate) below `fraction`."""
    out = np.empty(len(keys), bool)
    for i, (k, c) in enumerate(zip(keys, candidates, strict=True)):
        h = hashlib.sha256(f"{seed}|{','.join(map(str, k))}|{c}".encode()).digest()
        out[i] = int.from_bytes(h[:8], "little") / 2**64 < fraction
    return out


def preference_arrays(
    prefs: pa.Table, train_pairs: set
) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    """(keys, preferred, other) of the preferences whose two pairs are both training pairs."""
    keys, a, b = [], [], []
    for k, p, o in zip(*(prefs[c].to_pylist() for c in ("history_key", "preferred", "other")), strict=True):
        k = tuple(k)
        if (k, p) in train_pairs and (k, o) in train_pairs:
            keys.append(k)
            a.append(p)
            b.append(o)
    return keys, np.array(a, np.int64), np.array(b, np.int64)


# ------------------------------------------------------------------------------------------
# baselines and metrics


def global_rate(train: PairSet, n_clusters: int) -> np.ndarray:
    """(M,) each candidate's impression-weighted mean label over the training pairs (overall mean if unseen)."""
    w = np.bincount(train.candidates, train.impressions, n_clusters)
    s = np.bincount(train.candidates, train.impressions * train.labels, n_clusters)
    overall = float((train.impressions * train.labels).sum() / max(train.impressions.sum(), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w > 0, s / w, overall)


def sample_share(candidates: pa.Table | None, keys, cands) -> np.ndarray | None:
    """Share of each key's novelty samples that named the candidate (0 when it was never sampled)."""
    if candidates is None:
        return None
    share: dict[tuple, float] = {}
    for k, cs, ns, n in zip(
        *(candidates[c].to_pylist() for c in ("history_key", "candidates", "counts", "n_samples")),
        strict=True,
    ):
        for c, cnt in zip(cs, ns, strict=True):
            share[(tuple(k), c)] = cnt / max(n, 1)
    return np.array([share.get((k, int(c)), 0.0) for k, c in zip(keys, cands, strict=True)])


def platt(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """(a, b) of sigmoid(a x + b) fitted to soft labels y by Newton's method (a small ridge keeps it finite)."""
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([((p - y) * x).sum() + 1e-3 * a, (p - y).sum()])
        w = p * (1 - p)
        h = np.array([[(w * x * x).sum() + 1e-3, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-9]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def sigmoid(x: np.ndarray, a: float = 1.0, b: float = 0.0) -> np.ndarray:
    return 1 / (1 + np.exp(-(a * np.asarray(x, np.float64) + b)))


def pair_metrics(labels: np.ndarray, probs: np.ndarray, median: float) -> dict:
    """AUC against label > median of the training labels, and logloss against the soft label."""
    a = auc(labels > median, probs)
    return {"auc": None if math.isnan(a) else round(a, 4), "logloss": round(logloss(labels, probs), 4)}


# ------------------------------------------------------------------------------------------
# training


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


def check_base(base: str) -> None:
    """Fail fast on a base folder that is not a whole causal LM (a ValueError naming the folder or the
    truncated weights file), before anything is read or written; presets need no check."""
    if base not in PRESETS:
        from lm.presets import resolve_base

        resolve_base(base)


def check_out(out: str | os.PathLike) -> Path:
    """`out` if an alignment model may be swapped in there: new, empty, or an earlier alignment model."""
    from alignment.model import INFO_FILE

    return check_output_folder(
        out, (INFO_FILE,), job="alignment.train_alignment", what="alignment model", flag="out"
    )


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
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from alignment.model import AlignmentModel, PairEncoder, build_backbone, save_alignment
    from alignment.score import score_logits
    from lm.device import pick_device

    check_out(out)
    config = config or AlignmentConfig()
    check_base(config.base)
    t_start = time.perf_counter()
    data = PairSet.from_table(pairs)
    held = heldout_mask(data.keys, data.candidates, config.eval_fraction, config.seed)
    train, evals = data.take(np.flatnonzero(~held)), data.take(np.flatnonzero(held))
    if len(train) < 2 or len(evals) < 2:
        raise ValueError(
            f"{len(data)} aggregated pairs give {len(train)} training and {len(evals)} held-out pairs; need at "
            "least 2 of each. Collect more feedback or lower --min-impressions."
        )
    pref_keys, pref_a, pref_b = preference_arrays(
        preferences, set(zip(train.keys, train.candidates.tolist(), strict=True))
    )
    if config.objective == "pairwise" and not len(pref_keys):
        raise ValueError("objective='pairwise': no preference pairs among the training pairs; lower min_gap.")

    torch.manual_seed(config.seed)
    backbone, tokenizer, hidden = build_backbone(config.base, vocab, config.tiny)
    method = config.resolved_method
    if method == "lora":
        backbone = apply_lora(
            backbone, config.base, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
            task_type="FEATURE_EXTRACTION",
        )  # fmt: skip
    device = pick_device(config.device)
    model = AlignmentModel(backbone, hidden).to(device)
    encoder = PairEncoder(tokenizer, vocab)
    median = float(np.median(train.labels))

    def heldout_loss() -> float:
        model.eval()
        logits = score_logits(model, encoder, evals.keys, evals.candidates, batch_size=256, device=device)
        model.train()
        return logloss(evals.labels, sigmoid(logits))

    loss_before = heldout_loss()
    n_items = len(train) if config.objective == "pointwise" else len(pref_keys)
    item_keys = train.keys if config.objective == "pointwise" else pref_keys
    per_key = config.items_per_key or (4 if config.objective == "pointwise" else 1)
    total = config.max_steps or max(1, round(config.epochs * math.ceil(n_items / config.batch_size)))
    warmup = max(1, int(config.warmup_fraction * total))
    head_params = list(model.head.parameters())
    body_params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": body_params, "lr": config.learning_rate},
            {"params": head_params, "lr": max(config.learning_rate, 1e-3)},
        ],
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    g = torch.Generator().manual_seed(config.seed)
    model.train()
    t0, step, seen, last = time.perf_counter(), 0, 0, float("nan")
    bar = tqdm(
        total=total, desc=f"alignment {config.base} ({method}, {config.objective})", disable=not progress
    )
    while step < total:
        for s in range(0, n_items, config.batch_size):
            if step >= total:
                break
            if s == 0:  # a new epoch
                order = _key_grouped_order(item_keys, per_key, g)
            idx = order[s : s + config.batch_size]
            if config.objective == "pointwise":
                logits = _shared_logits(
                    model, encoder, [train.keys[i] for i in idx], train.candidates[idx], device
                )
                target = torch.tensor(train.labels[idx], dtype=torch.float32, device=device)
                loss = F.binary_cross_entropy_with_logits(logits, target)
            else:
                both = np.concatenate([pref_a[idx], pref_b[idx]])
                s_ab = _shared_logits(model, encoder, [pref_keys[i] for i in idx] * 2, both, device)  # (2B,)
                loss = -F.logsigmoid(s_ab[: len(idx)] - s_ab[len(idx) :]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(body_params + head_params, config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            seen += len(idx)
            last = loss.item()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    train_s = time.perf_counter() - t0

    model.eval()
    eval_logits = score_logits(model, encoder, evals.keys, evals.candidates, batch_size=256, device=device)
    if config.objective == "pairwise":  # Bradley-Terry fixes score differences only: calibrate the level
        sub = np.arange(len(train))[: min(len(train), 2000)]
        tr_logits = score_logits(
            model, encoder, [train.keys[i] for i in sub], train.candidates[sub], device=device
        )
        a, b = platt(tr_logits.astype(np.float64), train.labels[sub])
        eval_probs = sigmoid(eval_logits, a, b)
    else:
        eval_probs = sigmoid(eval_logits)
    evaluation = {
        "heldout_pairs": len(evals),
        "label_median": median,
        "positive_share": round(float((evals.labels > median).mean()), 4),
        "model": pair_metrics(evals.labels, eval_probs, median),
        "global_positive_rate": pair_metrics(
            evals.labels, global_rate(train, vocab.size)[evals.candidates], median
        ),
    }
    share_train = sample_share(candidates, train.keys, train.candidates)
    if share_train is not None:
        a, b = platt(share_train, train.labels)
        share_eval = sample_share(candidates, evals.keys, evals.candidates)
        evaluation["novelty_sample_frequency"] = pair_metrics(evals.labels, sigmoid(share_eval, a, b), median)

    report = {
        "base": config.base,
        "method": method,
        "objective": config.objective,
        "pairs": len(data),
        "train_pairs": len(train),
        "preferences": len(pref_keys),
        "heldout_loss_before": round(loss_before, 4),
        "heldout_loss_after": round(logloss(evals.labels, sigmoid(eval_logits)), 4),
        "evaluation": evaluation,
        "final_train_loss": round(last, 4),
        "steps": step,
        "examples_seen": seen,
        "train_s": round(train_s, 2),
        "examples_per_s": round(seen / train_s, 1) if train_s else None,
        "trainable_params": sum(p.numel() for p in body_params + head_params),
        "device": str(device),
        "total_s": round(time.perf_counter() - t_start, 2),
        "out": str(out),
    }
    info = {
        "format_version": 1,
        "base": config.base if config.base in PRESETS else str(Path(config.base).resolve()),
        "method": method,
        "text": "history: <name> (<description>) | ...\\ncandidate: <name> (<description>)<eos>",
        "clusters": {
            "names": list(vocab.names),
            "descriptions": list(vocab.descriptions),
            "signature": vocab.signature(),
        },
        "config": asdict(config),
        "report": report,
    }
    out = check_out(out)  # again: the folder may have been filled while the model trained
    tmp = staging_folder(out)
    try:
        save_alignment(tmp, model, tokenizer, info, method)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
