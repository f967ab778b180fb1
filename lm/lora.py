"""LoRA adapters (peft) on a causal LM's attention and MLP projections, for both LLMs.

`LoraSettings` is the one LoRA configuration of the project: the novelty SFT and the alignment trainer
hold it as their `lora` field, and a model folder's info JSON saves it beside the adapter (lm.info).
It is named apart from peft's `LoraConfig`, which `apply_lora` builds from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """The adapters' shape: delta W = (alpha / r) B A, with A (r, D_in), B (D_out, r), dropout on the input."""

    r: int = 16  # rank of A and B: the adapters' capacity (and their parameter count)
    alpha: int = 32  # scale numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapters' input while training

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraSettings.r={self.r!r}: the LoRA rank must be an integer >= 1.")
        if not self.alpha > 0:
            raise ValueError(
                f"LoraSettings.alpha={self.alpha!r}: must be > 0 (the update scales by alpha / r)."
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSettings.dropout={self.dropout!r}: must be in [0, 1).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoraSettings:
        """The settings saved by to_dict; an unknown key is a ValueError naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"LoraSettings: expected a dict of {{r, alpha, dropout}}, got {d!r}.")
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(
                f"LoraSettings: unknown field(s) {sorted(set(d) - known)}; known: {sorted(known)}."
            )
        return cls(**d)


def apply_lora(model, base: str, lora: LoraSettings, task_type: str):
    """`model` wrapped with LoRA adapters (peft) on whichever attention and MLP projections it has.

    task_type: peft's task type, "CAUSAL_LM" (novelty LLM) or "FEATURE_EXTRACTION" (alignment backbone).
    """
    from peft import LoraConfig, get_peft_model

    targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
    if not targets:
        raise ValueError(
            f"base={base!r}: none of the LoRA target modules {LORA_TARGETS} exist in this model."
        )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type=task_type,
    )
    return get_peft_model(model, config)
