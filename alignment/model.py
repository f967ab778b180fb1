"""The alignment LLM: an LM backbone plus a linear projection to one score.

A (history key, candidate cluster) pair is read as text,

    "history: <name c_1> (<description c_1>) | ... | <name c_K> (...)\\ncandidate: <name c> (<description c>)<eos>"

and scored from the backbone's last hidden state at the final token:

    s(h, c) = w^T z_L(h, c) + b + prior(h, c),      P(members of key h engage with c) = sigmoid(s)

prior(h, c) (residual training, AlignmentConfig.prior; alignment.prior) is a fixed table fitted on the
training pairs: the logit of candidate c's smoothed global positive rate (plus the key's fitted offset for
"key_offset"). The model starts at that baseline and the LM learns the correction. Without one (and in
folders saved before it existed) prior(h, c) = 0.

Backbones are the novelty model's presets: `tiny` (trained from scratch here), `smollm2-135m`, any
local Hugging Face causal-LM folder (a trained novelty model folder included: its weights already know
which clusters follow which). Pretrained backbones get LoRA adapters; `tiny` trains every weight.

Saved folder:
    alignment.json      alignment.info.AlignmentModelInfo: format, base, method, clusters, training and
                        LoRA config, report
    backbone/           full training: the backbone's config.json + model.safetensors
    adapter/            LoRA: the peft adapter (the base is resolved again at load time)
    head.safetensors    the projection: weight (1, D), bias (1,)
    prior.safetensors   residual models only: alignment.prior.AlignmentPrior (logit (M,), key_ids, key_logit)
    tokenizer files
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alignment.info import INFO_FILE, AlignmentModelInfo, read_alignment_info
from alignment.prior import AlignmentPrior
from catalog.vocabulary import ClusterVocabulary, history_text

__all__ = [
    "HEAD_FILE", "INFO_FILE", "AlignmentModel", "PairEncoder", "build_backbone", "load_alignment",
    "read_alignment_info", "save_alignment",
]  # fmt: skip

HEAD_FILE = "head.safetensors"


class AlignmentModel(nn.Module):
    """s = w^T z_L + b + prior(h, c) on the final token's hidden state (the papers' LM + linear projection,
    plus a fixed logit when trained as a residual of a baseline).

    Args:
        backbone: a transformers base model (no LM head) whose output has `last_hidden_state`.
        hidden_size: D, the backbone's width.
        prior: alignment.prior.AlignmentPrior or None (prior = 0); a fixed table, never trained.

    forward(input_ids (B, S), attention_mask (B, S), right-padded, offset (B,)) -> logits (B,); offset is
    prior(h, c) of each row (self.offsets), None for a model without a prior.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, prior: AlignmentPrior | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.prior = prior

    def offsets(self, keys, candidates, device) -> torch.Tensor | None:
        """(N,) prior(h, c) of the pairs on `device`, or None without a prior."""
        if self.prior is None:
            return None
        return torch.from_numpy(self.prior.offsets(keys, candidates)).to(device)

    def _project(self, z_last: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        s = self.head(z_last.float()).squeeze(-1)  # (B,)
        assert (offset is None) == (self.prior is None), (
            "pass offset = self.offsets(...) exactly when a prior exists"
        )
        return s if offset is None else s + offset

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, D)
        last = attention_mask.sum(1) - 1  # (B,) index of each row's final token
        z_last = z[torch.arange(z.shape[0], device=z.device), last]  # (B, D)
        return self._project(z_last, offset)  # (B,)

    def forward_shared(
        self,
        prefix_ids: torch.Tensor,
        prefix_mask: torch.Tensor,
        rows: torch.Tensor,
        suffix_ids: torch.Tensor,
        suffix_mask: torch.Tensor,
        offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The logits of forward(prefix + suffix), each history key's prefix computed once.

        prefix_ids, prefix_mask (P, Lp) right-padded; rows (N,) the prefix of each pair; suffix_ids,
        suffix_mask (N, Ls) right-padded; offset (N,) the pairs' prior, as in forward -> logits (N,). The prefixes' KV cache is gathered per pair and
        the suffixes continue at each prefix's true length, so positions and attention match the
        concatenated sequence exactly (padding slots are masked out).
        """
        cache = self.backbone(
            input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True
        ).past_key_values
        cache.batch_select_indices(rows)
        steps = torch.arange(suffix_ids.shape[1], device=suffix_ids.device)
        position_ids = prefix_mask.sum(1)[rows][:, None] + steps[None, :]  # (N, Ls)
        mask = torch.cat([prefix_mask[rows], suffix_mask], dim=1)  # (N, Lp + Ls)
        z = self.backbone(
            input_ids=suffix_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache
        ).last_hidden_state  # (N, Ls, D)
        last = suffix_mask.sum(1) - 1
        return self._project(z[torch.arange(z.shape[0], device=z.device), last], offset)  # (N,)


class PairEncoder:
    """Token ids of (history key, candidate) texts. The key's part and the candidate's part are tokenized
    once each and concatenated, so training and every scorer see identical ids."""

    def __init__(self, tokenizer, vocab: ClusterVocabulary):
        self.tokenizer, self.vocab = tokenizer, vocab
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the alignment backbone's tokenizer has no eos token; the score is read at it.")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self._cands = [
            self._ids(f" {n} ({d})") + [eos] for n, d in zip(vocab.names, vocab.descriptions, strict=True)
        ]
        self._keys: dict[tuple[int, ...], list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def key_ids(self, key: tuple[int, ...]) -> list[int]:
        if key not in self._keys:
            self._keys[key] = self._ids(f"history: {history_text(self.vocab, key)}\ncandidate:")
        return self._keys[key]

    def candidate_ids(self, candidate: int) -> list[int]:
        return self._cands[candidate]

    def __call__(self, key: tuple[int, ...], candidate: int) -> list[int]:
        return self.key_ids(key) + self._cands[candidate]

    def collate(self, seqs: Sequence[list[int]], device: str | torch.device = "cpu"):
        """(input_ids, attention_mask), right-padded, each (B, S)."""
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        ids = np.full((len(seqs), int(lengths.max())), self.pad_id, dtype=np.int64)
        for i, s in enumerate(seqs):  # numpy rows: one tensor per batch, not one per sequence
            ids[i, : len(s)] = s
        mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask.astype(np.int64)).to(device)


def tiny_tokenizer_texts(vocab: ClusterVocabulary) -> list[str]:
    return ["history: | next:"] * 4 + [" " + n for n in vocab.names]


def build_backbone(base: str, vocab: ClusterVocabulary, tiny=None):
    """(backbone, tokenizer, hidden size) for a preset or a causal-LM folder, float32."""
    from transformers import AutoModel, AutoTokenizer

    from lm.presets import build_tiny, resolve_base

    if base == "tiny":
        # the texts the tiny tokenizer has always been trained with (the plain prompt's words and answers):
        # a tokenizer learnt on "candidate:" instead splits it into 4 pieces and the small model's held-out
        # AUC on the test world fell from 0.77 to 0.50
        lm, tokenizer = build_tiny(vocab, tiny, tiny_tokenizer_texts(vocab))
        return lm.model, tokenizer, lm.config.hidden_size
    folder = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    backbone = AutoModel.from_pretrained(folder, dtype=torch.float32)
    return backbone, tokenizer, backbone.config.hidden_size


def save_alignment(folder: Path, model: AlignmentModel, tokenizer, info: AlignmentModelInfo) -> None:
    """Write an alignment model folder's contents into `folder` (a staging folder swapped in by the caller):
    the adapter (info.method == "lora") or the whole backbone, the head, the prior (if any), the tokenizer,
    alignment.json."""
    from safetensors.torch import save_file

    if info.method == "lora":
        model.backbone.save_pretrained(folder / "adapter")
    else:
        model.backbone.save_pretrained(folder / "backbone", safe_serialization=True)
    head = {k: v.detach().float().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(folder / HEAD_FILE))
    if model.prior is not None:
        model.prior.save(folder)
    tokenizer.save_pretrained(folder)
    info.write(folder)


def load_alignment(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, PairEncoder, AlignmentModelInfo) from a saved folder; LoRA adapters
    are merged."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from lm.presets import check_safetensors_file, check_weight_files

    folder = Path(folder)
    info = read_alignment_info(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    fix = "the alignment model folder is truncated or corrupt; retrain it (python -m jobs.train_alignment)"
    try:
        head = load_file(str(folder / HEAD_FILE))
    except Exception as exc:  # safetensors raises its own error type on a short or corrupt file
        raise ValueError(f"{folder / HEAD_FILE}: not a readable safetensors file ({exc}); {fix}.") from exc
    if info.method == "lora":
        from peft import PeftModel

        from lm.presets import resolve_base

        base = AutoModel.from_pretrained(resolve_base(info.base), dtype=torch.float32)
        adapter = folder / "adapter" / "adapter_model.safetensors"
        if adapter.is_file():
            check_safetensors_file(adapter, fix)
        backbone = PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload()
    else:
        check_weight_files(folder / "backbone", fix)
        backbone = AutoModel.from_pretrained(folder / "backbone", dtype=torch.float32)
    model = AlignmentModel(
        backbone, backbone.config.hidden_size, AlignmentPrior.load(folder, info.vocab.size, fix)
    )
    try:
        model.head.load_state_dict(head)
    except RuntimeError as exc:  # a head of another width
        raise ValueError(f"{folder / HEAD_FILE} does not fit the backbone ({exc}); {fix}.") from exc
    model.to(device).eval()
    return model, PairEncoder(tokenizer, info.vocab), info
