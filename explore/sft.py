"""Supervised fine-tuning of the novelty LLM on real cluster transitions.

Each example is prompt(history key) + answer(target cluster name) + eos; the loss is the cross-entropy
of the answer tokens only. The `tiny` preset trains every weight from scratch; pretrained bases get
LoRA adapters (peft) on their attention and MLP projections, merged back into plain weights at the end,
so the saved folder is an ordinary Hugging Face model that vLLM loads directly.

The saved folder holds the weights (safetensors), config.json, the tokenizer, and novelty.json: the
prompt format, the cluster names it was trained on (vLLM's output is matched against them), the
training config, the example counts and the held-out losses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from catalog.io import replace_folder, staging_folder
from catalog.outputs import check_output_folder
from catalog.vocabulary import ClusterVocabulary
from explore.examples import ExampleConfig, NoveltyExamples, build_examples
from explore.model_info import INFO_FILE
from explore.prompts import PromptFormat, tokenizer_texts
from explore.tokenizer import answer_token_ids, check_expressible, encode_prompt
from lm.lora import apply_lora
from lm.presets import PRESETS, TinyLMConfig, build_tiny, load_pretrained, resolve_base
from lm.schedule import warmup_cosine


@dataclass(frozen=True)
class SFTConfig:
    base: str = "tiny"  # a preset (tiny, smollm2-135m) or a local Hugging Face causal-LM folder
    epochs: float = 3.0  # passes over the training examples
    max_steps: int = 0  # stop after this many optimizer steps (0: epochs decide)
    batch_size: int = 32
    lr: float = 0.0  # 0: 3e-3 for full training of tiny, 2e-4 for LoRA
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to 10%
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_r: int = 16  # LoRA rank for pretrained bases
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    max_eval_examples: int = 2000  # held-out examples used for the loss
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    seed: int = 0

    def __post_init__(self):
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(
                f"SFTConfig: epochs={self.epochs}, max_steps={self.max_steps}; set one of them > 0."
            )
        if self.batch_size < 1:
            raise ValueError(f"SFTConfig.batch_size={self.batch_size}: must be >= 1.")
        if self.lr < 0:
            raise ValueError(f"SFTConfig.lr={self.lr}: must be >= 0 (0 picks the default).")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"SFTConfig.warmup_fraction={self.warmup_fraction}: must be in [0, 1).")
        if self.lora_r < 1:
            raise ValueError(f"SFTConfig.lora_r={self.lora_r}: must be >= 1.")

    @property
    def method(self) -> str:
        return "full" if self.base == "tiny" else "lora"

    @property
    def learning_rate(self) -> float:
        return self.lr or (3e-3 if self.method == "full" else 2e-4)


def prompt_format_for(tokenizer, base: str, k: int) -> PromptFormat:
    """Chat style where the tokenizer has a chat template (instruction-tuned bases), plain otherwise."""
    chat = base != "tiny" and bool(getattr(tokenizer, "chat_template", None))
    return PromptFormat("chat" if chat else "plain", k)


class _Encoder:
    """Caches prompt and answer ids (keys and targets repeat across examples)."""

    def __init__(self, tokenizer, fmt: PromptFormat, vocab: ClusterVocabulary):
        self.tokenizer, self.fmt, self.vocab = tokenizer, fmt, vocab
        self._prompts: dict[tuple[int, ...], list[int]] = {}
        self._answers = [answer_token_ids(tokenizer, fmt, n) for n in vocab.names]

    def __call__(self, key: tuple[int, ...], target: int) -> tuple[list[int], list[int]]:
        if key not in self._prompts:
            self._prompts[key] = encode_prompt(self.tokenizer, self.fmt, self.vocab, key)
        return self._prompts[key], self._answers[target]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """(input_ids, attention_mask, labels), right-padded; labels are -100 except on answer tokens."""
    import torch

    length = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)  # (B, S)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(a)
    return ids, mask, labels


def answer_loss(model, ids, mask, labels):
    """Mean cross-entropy over answer tokens, and how many there were."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, S-1, V)
    target = labels[:, 1:]
    n = int((target != -100).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100
    )
    return loss, n


def heldout_loss(model, encoder: _Encoder, examples: NoveltyExamples, batch_size: int, pad_id: int) -> float:
    """Token-weighted mean answer cross-entropy on held-out examples."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            pairs = [
                encoder(examples.keys[i], examples.targets[i])
                for i in range(s, min(s + batch_size, len(examples)))
            ]
            loss, n = answer_loss(model, *collate(pairs, pad_id))
            total += float(loss) * n
            count += n
    return total / max(count, 1)


def check_out(out: str | os.PathLike) -> Path:
    """`out` if a novelty model may be swapped in there: new, empty, or an earlier novelty model folder."""
    return check_output_folder(
        out, (INFO_FILE,), job="explore.train_novelty", what="novelty model", flag="out"
    )


def _write_folder(out: Path, model, tokenizer, info: dict) -> None:
    """Write the model folder beside `out` and swap it in, so a crash never leaves half a model."""
    check_out(out)  # again: the folder may have been filled while the model trained
    tmp = staging_folder(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_novelty(
    vocab: ClusterVocabulary,
    histories,
    out: str | os.PathLike,
    config: SFTConfig | None = None,
    examples: ExampleConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Fine-tune a base on the histories' novelty transitions and save the model folder at `out`.

    Returns the training report (also saved in novelty.json): example counts, held-out loss before and
    after, steps, examples/s, and where the model went. An `out` that holds files but no novelty model
    is refused before training (ValueError): the swap would delete them.
    """
    import torch
    from tqdm import tqdm

    check_out(out)
    config = config or SFTConfig()
    examples = examples or ExampleConfig()
    if config.base not in PRESETS:
        resolve_base(config.base)  # fail fast on a bad folder before building examples
    t_start = time.perf_counter()
    train, evals, example_stats = build_examples(histories, examples, vocab.size)
    if not len(train) or not len(evals):
        raise ValueError(
            f"no {'training' if not len(train) else 'held-out'} examples: {example_stats}. Histories need at "
            f"least K+1={examples.k + 1} distinct runs; use more members or a smaller eval_fraction."
        )
    torch.manual_seed(config.seed)
    if config.method == "full":
        model, tokenizer = build_tiny(vocab, config.tiny, tokenizer_texts(vocab))
    else:
        model, tokenizer = load_pretrained(resolve_base(config.base))
    fmt = prompt_format_for(tokenizer, config.base, examples.k)
    max_answer_tokens = check_expressible(tokenizer, vocab, fmt)
    encoder = _Encoder(tokenizer, fmt, vocab)
    pad_id = tokenizer.pad_token_id
    evals = evals.subset(range(min(len(evals), config.max_eval_examples)))
    if config.method == "lora":
        model = apply_lora(
            model, config.base, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
            task_type="CAUSAL_LM",
        )  # fmt: skip

    loss_before = heldout_loss(model, encoder, evals, config.batch_size, pad_id)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    warmup = max(1, int(config.warmup_fraction * total))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
    g = torch.Generator().manual_seed(config.seed)
    model.train()
    t0 = time.perf_counter()
    seen, tokens, last = 0, 0, float("nan")
    bar = tqdm(total=total, desc=f"sft {config.base} ({config.method})", disable=not progress, unit="step")
    step = 0
    while step < total:
        order = torch.randperm(len(train), generator=g).tolist()
        for s in range(0, len(order), config.batch_size):
            if step >= total:
                break
            idx = order[s : s + config.batch_size]
            ids, mask, labels = collate([encoder(train.keys[i], train.targets[i]) for i in idx], pad_id)
            loss, _ = answer_loss(model, ids, mask, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            seen += len(idx)
            tokens += int(mask.sum())
            last = loss.item()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    train_s = time.perf_counter() - t0
    loss_after = heldout_loss(model, encoder, evals, config.batch_size, pad_id)
    if config.method == "lora":
        model = model.merge_and_unload()
    model.config.architectures = [type(model).__name__]
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id

    report = {
        "base": config.base,
        "method": config.method,
        "prompt_format": fmt.to_dict(),
        "examples": example_stats,
        "heldout_loss_before": round(loss_before, 4),
        "heldout_loss_after": round(loss_after, 4),
        "heldout_examples_for_loss": len(evals),
        "final_train_loss": round(last, 4),
        "steps": step,
        "examples_seen": seen,
        "train_s": round(train_s, 2),
        "examples_per_s": round(seen / train_s, 1) if train_s else None,
        "tokens_per_s": round(tokens / train_s, 1) if train_s else None,
        "trainable_params": sum(p.numel() for p in params),
        "max_answer_tokens": max_answer_tokens,
        "total_s": round(time.perf_counter() - t_start, 2),
        "out": str(out),
    }
    info = {
        "format_version": 1,
        "prompt_format": fmt.to_dict(),
        "clusters": {
            "names": list(vocab.names),
            "descriptions": list(vocab.descriptions),
            "signature": vocab.signature(),
        },
        "sft_config": asdict(config),
        "example_config": asdict(examples),
        "report": report,
    }
    _write_folder(Path(out), model, tokenizer, info)
    return report
