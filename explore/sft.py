"""Supervised fine-tuning of the novelty LLM on real cluster transitions.

Each example is prompt(history key) + answer(target cluster name) + eos; the loss is the cross-entropy
of the answer tokens only. The `tiny` preset trains every weight from scratch; pretrained bases get
LoRA adapters (peft) on their attention and MLP projections, merged back into plain weights at the end,
so the saved folder is an ordinary Hugging Face model that vLLM loads directly.

Retrieval augmentation (`rag_top` > 0, explore.retrieval): each prompt also lists the `rag_top` clusters
that training members most often moved to next from the key (back-off to its suffixes, then overall).
The table is built from the training members' histories only; each example's list leaves out its own
member's transitions, as a held-out member's are absent at evaluation. The table is saved in the folder
(retrieval.parquet, retrieval.json) and recorded in novelty.json; jobs.build_retrieval refreshes it from
fresh logs without retraining.

The saved folder holds the weights (safetensors), config.json, the tokenizer, and novelty.json
(explore.model_info.NoveltyModelInfo): the prompt format, the cluster names it was trained on (vLLM's
output is matched against them), the training and LoRA config, the example counts and the held-out losses.

`NoveltyTrainer` has the steps of ranking.train.Trainer's shape: split (examples) -> build (model,
tokenizer, prompt format) -> fit (the loop, lm.loop) -> evaluate (held-out answer loss) -> save;
`train_novelty` runs them in that order. The vLLM evaluation (explore.evaluate) needs the saved folder
and runs after, in the job.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from catalog.io import replace_folder, staging_folder
from catalog.outputs import check_output_folder
from catalog.vocabulary import ClusterVocabulary
from explore.examples import ExampleConfig, NoveltyExamples, build_examples, held_out_members
from explore.model_info import INFO_FILE, NoveltyModelInfo
from explore.prompts import PromptFormat, tokenizer_texts
from explore.retrieval import RetrievalTable, build_table
from explore.tokenizer import answer_token_ids, check_expressible, encode_prompt
from lm.info import config_kwargs
from lm.loop import FitResult, adamw_warmup_cosine, check_trainer_config, fit_steps, total_steps
from lm.lora import LoraSettings, apply_lora
from lm.presets import PRESETS, TinyLMConfig, build_tiny, load_pretrained, resolve_base


@dataclass(frozen=True)
class SFTConfig:
    base: str = "tiny"  # a preset (tiny, smollm2-135m) or a local Hugging Face causal-LM folder
    epochs: float = 3.0  # passes over the training examples
    max_steps: int = 0  # stop after this many optimizer steps (0: epochs decide)
    batch_size: int = 32
    lr: float = 0.0  # 0: 3e-3 for full training of tiny (1e-3 with retrieval), 2e-4 for LoRA
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to 10%
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)  # adapters for pretrained bases
    max_eval_examples: int = 2000  # held-out examples used for the loss
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    seed: int = 0
    rag_top: int = 0  # retrieved clusters listed in each prompt (explore.retrieval); 0: no retrieval

    def __post_init__(self):
        check_trainer_config(self)
        if self.rag_top < 0:
            raise ValueError(
                f"SFTConfig.rag_top={self.rag_top}: must be >= 0 (0: no retrieval augmentation)."
            )

    @classmethod
    def from_dict(cls, d: dict) -> SFTConfig:
        """A config saved with asdict (novelty.json's sft_config); an unknown key is a ValueError."""
        return cls(**config_kwargs(cls, d))

    @property
    def method(self) -> str:
        return "full" if self.base == "tiny" else "lora"

    @property
    def learning_rate(self) -> float:
        # with retrieval the prompts are about twice as long, and 3e-3 degrades the tiny model between 300 and
        # 1000 steps (held-out loss 0.59 -> 0.66, validity 27%); 1e-3 reaches 0.44 and 97% (README)
        if self.method == "full":
            return self.lr or (1e-3 if self.rag_top else 3e-3)
        return self.lr or 2e-4


def prompt_format_for(tokenizer, base: str, k: int, retrieved: int = 0) -> PromptFormat:
    """Chat style where the tokenizer has a chat template (instruction-tuned bases), plain otherwise."""
    chat = base != "tiny" and bool(getattr(tokenizer, "chat_template", None))
    return PromptFormat("chat" if chat else "plain", k, retrieved)


class _Encoder:
    """Caches prompt and answer ids (keys and targets repeat across examples). With a retrieval table the
    prompt lists the key's retrieved clusters, the example's own member left out."""

    def __init__(
        self, tokenizer, fmt: PromptFormat, vocab: ClusterVocabulary, retrieval: RetrievalTable | None
    ):
        self.tokenizer, self.fmt, self.vocab, self.retrieval = tokenizer, fmt, vocab, retrieval
        self._prompts: dict[tuple, list[int]] = {}
        self._answers = [answer_token_ids(tokenizer, fmt, n) for n in vocab.names]

    def __call__(
        self, key: tuple[int, ...], target: int, member: int | None = None
    ) -> tuple[list[int], list[int]]:
        if self.retrieval is None:
            cache_key, retrieved = key, None
        else:
            retrieved = tuple(self.retrieval.lookup(key, self.fmt.retrieved, member=member))
            cache_key = (key, retrieved)
        if cache_key not in self._prompts:
            self._prompts[cache_key] = encode_prompt(self.tokenizer, self.fmt, self.vocab, key, retrieved)
        return self._prompts[cache_key], self._answers[target]


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


def check_out(out: str | os.PathLike) -> Path:
    """`out` if a novelty model may be swapped in there: new, empty, or an earlier novelty model folder."""
    return check_output_folder(
        out, (INFO_FILE,), job="explore.train_novelty", what="novelty model", flag="out"
    )


@dataclass
class NoveltySplit:
    """The training examples, the held-out ones (capped at max_eval_examples) and their counts."""

    train: NoveltyExamples
    evals: NoveltyExamples
    stats: dict


class NoveltyTrainer:
    """Fine-tunes one novelty model: split -> build -> fit -> evaluate -> save (train_novelty runs them).

    Args:
        vocab: the catalog's clusters (names and descriptions, the model's answers).
        config: SFTConfig.  examples: how the transitions become examples (K, caps, held-out members).
        progress: show a progress bar while fitting.
    """

    def __init__(
        self, vocab: ClusterVocabulary, config: SFTConfig, examples: ExampleConfig, *, progress: bool = True
    ):
        self.vocab, self.config, self.examples, self.progress = vocab, config, examples, progress
        self.model = self.tokenizer = self.format = self.encoder = None
        self.retrieval: RetrievalTable | None = None
        self.max_answer_tokens = 0

    def split(self, histories) -> NoveltySplit:
        """Training and held-out examples of the histories' novelty transitions (held out by member). With
        rag_top, also the retrieval table of the training members' transitions (held-out members excluded)."""
        train, evals, stats = build_examples(histories, self.examples, self.vocab.size)
        if not len(train) or not len(evals):
            raise ValueError(
                f"no {'training' if not len(train) else 'held-out'} examples: {stats}. Histories need at least "
                f"K+1={self.examples.k + 1} distinct runs; use more members or a smaller eval_fraction."
            )
        if self.config.rag_top:
            self.retrieval = build_table(
                k=self.examples.k, n_clusters=self.vocab.size, catalog_signature=self.vocab.signature(),
                histories=histories, sources=["histories (training members)"],
                exclude_members=held_out_members(histories, self.examples), track_members=True,
            )  # fmt: skip
        return NoveltySplit(train, evals.subset(range(min(len(evals), self.config.max_eval_examples))), stats)

    def build(self) -> None:
        """The model (tiny from scratch, or a pretrained base with LoRA), its tokenizer and prompt format."""
        import torch

        config = self.config
        torch.manual_seed(config.seed)
        if config.method == "full":
            model, self.tokenizer = build_tiny(self.vocab, config.tiny, tokenizer_texts(self.vocab))
        else:
            model, self.tokenizer = load_pretrained(resolve_base(config.base))
        if config.rag_top and self.retrieval is None:
            raise ValueError("SFTConfig.rag_top > 0: run split() first, it builds the retrieval table.")
        self.format = prompt_format_for(self.tokenizer, config.base, self.examples.k, config.rag_top)
        self.max_answer_tokens = check_expressible(self.tokenizer, self.vocab, self.format)
        self.encoder = _Encoder(self.tokenizer, self.format, self.vocab, self.retrieval)
        if config.method == "lora":
            model = apply_lora(model, config.base, config.lora, task_type="CAUSAL_LM")
        self.model = model

    @property
    def trainable(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _batch_loss(self, train: NoveltyExamples, idx) -> tuple:
        pairs = [self.encoder(train.keys[i], train.targets[i], train.members[i]) for i in idx]
        ids, mask, labels = collate(pairs, self.tokenizer.pad_token_id)
        loss, _ = answer_loss(self.model, ids, mask, labels)
        return loss, int(mask.sum())

    def fit(self, train: NoveltyExamples) -> FitResult:
        """AdamW with warm-up and cosine decay over shuffled epochs of the training examples."""
        import torch

        config, params = self.config, self.trainable
        total = total_steps(len(train), config.batch_size, config.epochs, config.max_steps)
        opt, sched = adamw_warmup_cosine(
            [{"params": params, "lr": config.learning_rate}],
            weight_decay=config.weight_decay, total=total, warmup_fraction=config.warmup_fraction,
        )  # fmt: skip
        g = torch.Generator().manual_seed(config.seed)
        self.model.train()
        return fit_steps(
            params, opt, sched, total=total, batch_size=config.batch_size,
            epoch_order=lambda: torch.randperm(len(train), generator=g).tolist(),
            batch_loss=lambda idx: self._batch_loss(train, idx),
            grad_clip=config.grad_clip, desc=f"sft {config.base} ({config.method})", progress=self.progress,
        )  # fmt: skip

    def evaluate(self, evals: NoveltyExamples) -> float:
        """The held-out answer loss: token-weighted mean cross-entropy of the answers (the training
        objective). Recall@n and format validity need vLLM and the saved folder: explore.evaluate."""
        import torch

        self.model.eval()
        total, count, pad_id = 0.0, 0, self.tokenizer.pad_token_id
        with torch.no_grad():
            for s in range(0, len(evals), self.config.batch_size):
                stop = min(s + self.config.batch_size, len(evals))
                pairs = [self.encoder(evals.keys[i], evals.targets[i]) for i in range(s, stop)]
                loss, n = answer_loss(self.model, *collate(pairs, pad_id))
                total += float(loss) * n
                count += n
        return total / max(count, 1)

    def info(self, report: dict) -> NoveltyModelInfo:
        config = self.config
        return NoveltyModelInfo(
            base=config.base, method=config.method, vocab=self.vocab, config=asdict(config),
            lora=config.lora if config.method == "lora" else None, report=report,
            prompt_format=self.format, example_config=asdict(self.examples),
            retrieval=self.retrieval.to_dict(config.rag_top) if self.retrieval is not None else None,
        )  # fmt: skip

    def save(self, out: str | os.PathLike, report: dict) -> None:
        """Merge LoRA adapters into plain weights, write the folder beside `out` and swap it in (a crash
        never leaves half a model)."""
        model, tokenizer = self.model, self.tokenizer
        if self.config.method == "lora":
            model = model.merge_and_unload()
        model.config.architectures = [type(model).__name__]
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        out = check_out(out)  # again: the folder may have been filled while the model trained
        tmp = staging_folder(out)
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if self.retrieval is not None:
                self.retrieval.write(tmp)
            self.info(report).write(tmp)
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
    check_out(out)
    config = config or SFTConfig()
    if config.base not in PRESETS:
        resolve_base(config.base)  # fail fast on a bad folder before building examples
    t_start = time.perf_counter()
    trainer = NoveltyTrainer(vocab, config, examples or ExampleConfig(), progress=progress)
    split = trainer.split(histories)
    trainer.build()
    loss_before = trainer.evaluate(split.evals)
    fit = trainer.fit(split.train)
    loss_after = trainer.evaluate(split.evals)
    report = {
        "base": config.base,
        "method": config.method,
        "prompt_format": trainer.format.to_dict(),
        "retrieval": trainer.retrieval.to_dict(config.rag_top) if trainer.retrieval is not None else None,
        "examples": split.stats,
        "heldout_loss_before": round(loss_before, 4),
        "heldout_loss_after": round(loss_after, 4),
        "heldout_examples_for_loss": len(split.evals),
        "final_train_loss": round(fit.final_loss, 4),
        "steps": fit.steps,
        "examples_seen": fit.examples_seen,
        "train_s": round(fit.train_s, 2),
        "examples_per_s": fit.examples_per_s,
        "tokens_per_s": fit.tokens_per_s,
        "trainable_params": sum(p.numel() for p in trainer.trainable),
        "max_answer_tokens": trainer.max_answer_tokens,
        "total_s": round(time.perf_counter() - t_start, 2),
        "out": str(out),
    }
    trainer.save(out, report)
    return report
